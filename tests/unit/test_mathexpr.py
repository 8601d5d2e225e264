"""math_expression: tokenizer, parser, exact Decimal / Float64 evaluation, errors with positions."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from trempy_nb.pipeline.mathexpr import (
    BinOp,
    Column,
    MathSyntaxError,
    Negate,
    Number,
    compile_math,
    parse,
    referenced_columns,
)

CATS = {
    "salary": "numeric",
    "bonus": "numeric",
    "qty": "integer",
    "rate": "float",
    "name": "text",
    "my col": "integer",
}


def run(
    expression: str, data: dict[str, list[str | None]], scales: dict[str, int] | None = None
) -> list[str | None]:
    math = compile_math(expression, CATS)
    df = pl.DataFrame(data, schema={c: pl.String for c in data})
    return df.select(math.to_polars(scales).cast(pl.String).alias("out"))["out"].to_list()


def test_precedence_and_associativity() -> None:
    assert parse("a + b * c") == BinOp(
        "+", Column("a", 0), BinOp("*", Column("b", 4), Column("c", 8))
    )
    assert parse("a - b - c") == BinOp(
        "-", BinOp("-", Column("a", 0), Column("b", 4)), Column("c", 8)
    )
    assert parse("-(a)") == Negate(Column("a", 2))
    assert parse("+-1") == Negate(Number("1"))
    assert parse('"my col" * 2') == BinOp("*", Column("my col", 0), Number("2"))
    assert parse('"a""b"') == Column('a"b', 0)
    assert referenced_columns(parse("salary * 1.1 + bonus - salary")) == ("salary", "bonus")


def test_exact_decimal_arithmetic() -> None:
    data = {"salary": ["5000.00", "1234.56", None], "bonus": ["100", "0.01", "5"]}
    out = run("salary * 1.1 + bonus", data, {"salary": 2, "bonus": 2})
    assert [Decimal(x) if x else None for x in out] == [
        Decimal("5600.00"),
        Decimal("1358.026"),
        None,
    ]
    assert run("(salary - bonus) * 2", data, {"salary": 2, "bonus": 2})[:2] == [
        "9800.00",
        "2469.10",
    ]
    assert run("-salary", data, {"salary": 2})[:2] == ["-5000.00", "-1234.56"]


def test_integer_inputs_give_exact_division() -> None:
    out = run("qty / 3", {"qty": ["7", "9", "-2"]})
    assert Decimal(out[0]) == Decimal("2.3333333333333333")
    assert Decimal(out[1]) == 3
    assert Decimal(out[2]) == Decimal("-0.6666666666666667")


def test_multiplication_keeps_every_digit() -> None:
    out = run(
        "salary * bonus", {"salary": ["1.00001"], "bonus": ["1.00001"]}, {"salary": 5, "bonus": 5}
    )
    assert Decimal(out[0]) == Decimal("1.0000200001")


def test_division_by_zero_is_null() -> None:
    assert run("qty / (qty - 2)", {"qty": ["2", "4"]}) == [None, "2.0000000000000000"]
    assert run("rate / 0", {"rate": ["1.5"]}) == [None]


def test_float_inputs_switch_to_float() -> None:
    math = compile_math("rate * qty", CATS)
    assert math.is_float and math.output_pg_type == "double precision"
    assert run("rate * qty + 0.5", {"rate": ["1.5", "-2"], "qty": ["2", None]}) == ["3.5", None]
    assert compile_math("qty * 2", CATS).output_pg_type == "numeric"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("salary +", "expression ends where a value was expected at character 9"),
        ("salary * (bonus", "expected ')' to close '(' at character 10, found end of expression"),
        (
            "salary ^ 2",
            "unexpected '^' (allowed: column names, numbers, + - * /, parentheses) at character 8",
        ),
        ("1e3", "unexpected 'e' after number at character 2"),
        ("__import__('os')", 'unexpected "\'"'),
        ("salary bonus", "unexpected 'bonus' at character 8"),
        ("", "empty expression"),
        ('"abc', "unterminated quoted column name at character 1"),
        ("()", "expected a number, a column or '(', found ')' at character 2"),
        ("1.2.3", "unexpected '.' after number"),
        ("(" * 300 + "1" + ")" * 300, "nested too deeply"),
        ("1" * 40, "has more than 38 digits"),
    ],
)
def test_syntax_errors_have_positions(expression: str, message: str) -> None:
    with pytest.raises(MathSyntaxError) as err:
        compile_math(expression, CATS)
    assert message in str(err.value)


def test_column_errors() -> None:
    with pytest.raises(ValueError, match="column 'nope' does not exist at this point"):
        compile_math("nope + 1", CATS)
    with pytest.raises(ValueError, match="column 'name' is text, not a number"):
        compile_math("name * 2", CATS)


def test_never_evaluates_python() -> None:
    for hostile in [
        "__import__",
        "os.system",
        "lambda: 1",
        "salary.__class__",
        "[1]",
        "{}",
        "a;b",
        "a,b",
    ]:
        with pytest.raises(ValueError):
            compile_math(hostile, CATS)
