"""A safe arithmetic language for `create_column` / `math_expression`.

Grammar (own tokenizer, recursive descent; nothing is ever evaluated as Python)::

    expr    := term (('+' | '-') term)*
    term    := factor (('*' | '/') factor)*
    factor  := ('-' | '+') factor | primary
    primary := NUMBER | IDENTIFIER | QUOTED_IDENTIFIER | '(' expr ')'

NUMBER is `123`, `1.5` or `.5` (no exponent). IDENTIFIER is a column name as
written (case-sensitive, letters, digits, `_`, `$`); any other name can be
written double-quoted, with `""` for a quote inside.

The tree compiles to a Polars expression. With integer/numeric inputs only,
arithmetic is exact Decimal: `+`/`-` keep the larger scale, `*` adds the
scales (like PostgreSQL numeric), `/` gives at least `DIV_SCALE` decimals
(rounded). Scales are capped at `MAX_SCALE` (beyond that results are rounded)
and a result that does not fit Decimal(38) raises. As soon as one input is a
float column, everything is computed in Float64. Division by zero gives null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

MAX_SCALE = 20
DIV_SCALE = 16
PRECISION = 38
NUMERIC_CATEGORIES = ("integer", "numeric", "float")


class MathSyntaxError(ValueError):
    """A math_expression that is not valid; the message gives the character position."""


# -- tokens ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # 'num', 'ident', 'op', 'lparen', 'rparen', 'end'
    text: str
    pos: int  # 0-based offset in the expression


def _error(expression: str, pos: int, message: str) -> MathSyntaxError:
    return MathSyntaxError(f"{message} at character {pos + 1} of {expression!r}")


def tokenize(expression: str) -> list[Token]:
    """Split an expression into tokens; anything outside the language is an error."""
    tokens: list[Token] = []
    i, n = 0, len(expression)
    while i < n:
        ch = expression[i]
        if ch.isspace():
            i += 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and expression[i + 1].isdigit()):
            start = i
            while i < n and expression[i].isdigit():
                i += 1
            if i < n and expression[i] == ".":
                i += 1
                while i < n and expression[i].isdigit():
                    i += 1
            if i < n and (expression[i].isalpha() or expression[i] in '_."'):
                raise _error(expression, i, f"unexpected {expression[i]!r} after number")
            tokens.append(Token("num", expression[start:i], start))
        elif ch.isalpha() or ch == "_":
            start = i
            while i < n and (expression[i].isalnum() or expression[i] in "_$"):
                i += 1
            tokens.append(Token("ident", expression[start:i], start))
        elif ch == '"':
            start = i
            i += 1
            name: list[str] = []
            while True:
                if i >= n:
                    raise _error(expression, start, "unterminated quoted column name")
                if expression[i] == '"':
                    if i + 1 < n and expression[i + 1] == '"':
                        name.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                name.append(expression[i])
                i += 1
            if not name:
                raise _error(expression, start, "empty quoted column name")
            tokens.append(Token("ident", "".join(name), start))
        elif ch in "+-*/":
            tokens.append(Token("op", ch, i))
            i += 1
        elif ch == "(":
            tokens.append(Token("lparen", ch, i))
            i += 1
        elif ch == ")":
            tokens.append(Token("rparen", ch, i))
            i += 1
        else:
            raise _error(
                expression,
                i,
                f"unexpected {ch!r} (allowed: column names, numbers, + - * /, parentheses)",
            )
    tokens.append(Token("end", "", n))
    return tokens


# -- tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    text: str


@dataclass(frozen=True)
class Column:
    name: str
    pos: int


@dataclass(frozen=True)
class Negate:
    operand: Node


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Node
    right: Node


Node = Number | Column | Negate | BinOp
_MAX_DEPTH = 200


class _Parser:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = tokenize(expression)
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise _error(self.expression, 0, "empty expression")
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise _error(self.expression, tok.pos, f"unexpected {tok.text!r}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek().kind == "op" and self.peek().text in "+-":
            op = self.take().text
            node = BinOp(op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek().kind == "op" and self.peek().text in "*/":
            op = self.take().text
            node = BinOp(op, node, self.factor())
        return node

    def factor(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text in "+-":
            self.take()
            self._enter(tok)
            operand = self.factor()
            self.depth -= 1
            return Negate(operand) if tok.text == "-" else operand
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            return Number(tok.text)
        if tok.kind == "ident":
            return Column(tok.text, tok.pos)
        if tok.kind == "lparen":
            self._enter(tok)
            node = self.expr()
            self.depth -= 1
            close = self.take()
            if close.kind != "rparen":
                where = "end of expression" if close.kind == "end" else repr(close.text)
                raise _error(
                    self.expression,
                    close.pos,
                    f"expected ')' to close '(' at character {tok.pos + 1}, found {where}",
                )
            return node
        if tok.kind == "end":
            raise _error(self.expression, tok.pos, "expression ends where a value was expected")
        raise _error(
            self.expression, tok.pos, f"expected a number, a column or '(', found {tok.text!r}"
        )

    def _enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _error(self.expression, tok.pos, "expression is nested too deeply")


def parse(expression: str) -> Node:
    """Parse an expression into a tree, or raise MathSyntaxError."""
    return _Parser(expression).parse()


def referenced_columns(node: Node) -> tuple[str, ...]:
    """Column names in order of first appearance."""
    out: list[str] = []

    def walk(n: Node) -> None:
        if isinstance(n, Column):
            if n.name not in out:
                out.append(n.name)
        elif isinstance(n, Negate):
            walk(n.operand)
        elif isinstance(n, BinOp):
            walk(n.left)
            walk(n.right)

    walk(node)
    return tuple(out)


# -- compiling -------------------------------------------------------------------------


@dataclass(frozen=True)
class MathExpression:
    """A parsed, type-checked expression; `to_polars` builds it for a batch."""

    source: str
    tree: Node
    columns: tuple[str, ...]
    categories: tuple[tuple[str, str], ...]  # (column, category) of referenced columns

    @property
    def is_float(self) -> bool:
        """Float64 arithmetic (some input is a float column) instead of exact Decimal."""
        return any(cat == "float" for _, cat in self.categories)

    @property
    def output_pg_type(self) -> str:
        return "double precision" if self.is_float else "numeric"

    def input_expr(self, name: str, scale: int = 0) -> pl.Expr:
        """A referenced column parsed from its text (null where the text does not parse)."""
        if self.is_float:
            return pl.col(name).cast(pl.Float64, strict=False)
        return pl.col(name).cast(pl.Decimal(PRECISION, min(scale, MAX_SCALE)), strict=False)

    def to_polars(self, scales: Mapping[str, int] | None = None, parsed: Mapping[str, str] | None = None) -> pl.Expr:
        """The expression over raw-text columns; `scales` gives each numeric column's scale.

        `parsed` names, per referenced column, a column that already holds its input_expr
        (with the same scale): the caller parsed the text once to check it, and it is not parsed again.
        """
        scales, parsed = scales or {}, parsed or {}
        if self.is_float:
            return self._float(self.tree, parsed)
        expr, _ = self._decimal(self.tree, scales, parsed)
        return expr

    def _input(self, name: str, scale: int, parsed: Mapping[str, str]) -> pl.Expr:
        return pl.col(parsed[name]) if name in parsed else self.input_expr(name, scale)

    def _float(self, node: Node, parsed: Mapping[str, str]) -> pl.Expr:
        if isinstance(node, Number):
            return pl.lit(float(node.text), dtype=pl.Float64)
        if isinstance(node, Column):
            return self._input(node.name, 0, parsed)
        if isinstance(node, Negate):
            return -self._float(node.operand, parsed)
        left, right = self._float(node.left, parsed), self._float(node.right, parsed)
        if node.op == "+":
            return left + right
        if node.op == "-":
            return left - right
        if node.op == "*":
            return left * right
        return left / pl.when(right != 0).then(right)

    def _decimal(self, node: Node, scales: Mapping[str, int], parsed: Mapping[str, str]) -> tuple[pl.Expr, int]:
        if isinstance(node, Number):
            scale = len(node.text.partition(".")[2])
            scale = min(scale, MAX_SCALE)
            return pl.lit(node.text).cast(pl.Decimal(PRECISION, scale)), scale
        if isinstance(node, Column):
            scale = min(scales.get(node.name, 0), MAX_SCALE)
            return self._input(node.name, scale, parsed), scale
        if isinstance(node, Negate):
            expr, scale = self._decimal(node.operand, scales, parsed)
            return -expr, scale
        left, sl = self._decimal(node.left, scales, parsed)
        right, sr = self._decimal(node.right, scales, parsed)
        if node.op in "+-":
            scale = max(sl, sr)
            left = left.cast(pl.Decimal(PRECISION, scale))
            right = right.cast(pl.Decimal(PRECISION, scale))
            return (left + right if node.op == "+" else left - right), scale
        if node.op == "*":
            scale = min(sl + sr, MAX_SCALE)
            # Polars keeps the larger operand scale: widen the left one to the exact product scale.
            return left.cast(pl.Decimal(PRECISION, max(scale, sr))) * right, max(scale, sr)
        scale = min(max(sl, sr, DIV_SCALE), MAX_SCALE)
        left = left.cast(pl.Decimal(PRECISION, max(scale, sr)))
        return left / pl.when(right != 0).then(right), max(scale, sr)


def _check_numbers(expression: str, node: Node) -> None:
    """Literals must fit Decimal(38): refuse them here rather than fail on every batch."""
    if isinstance(node, Number):
        whole, _, frac = node.text.partition(".")
        if len(whole.lstrip("0")) + min(len(frac), MAX_SCALE) > PRECISION:
            raise MathSyntaxError(
                f"number {node.text} has more than {PRECISION} digits in {expression!r}"
            )
    elif isinstance(node, Negate):
        _check_numbers(expression, node.operand)
    elif isinstance(node, BinOp):
        _check_numbers(expression, node.left)
        _check_numbers(expression, node.right)


def compile_math(expression: str, categories: Mapping[str, str]) -> MathExpression:
    """Parse and type-check: every name must be an existing integer, numeric or float column.

    `categories` maps the column names available at this point to their type
    category. Raises MathSyntaxError (bad syntax) or ValueError (unknown or
    non-numeric column).
    """
    tree = parse(expression)
    _check_numbers(expression, tree)
    columns = referenced_columns(tree)
    typed: list[tuple[str, str]] = []
    for name in columns:
        if name not in categories:
            raise ValueError(
                f"column '{name}' does not exist at this point (columns: {', '.join(categories)})"
            )
        cat = categories[name]
        if cat not in NUMERIC_CATEGORIES:
            raise ValueError(
                f"column '{name}' is {cat}, not a number; math_expression takes integer, numeric "
                "or float columns"
            )
        typed.append((name, cat))
    return MathExpression(source=expression, tree=tree, columns=columns, categories=tuple(typed))
