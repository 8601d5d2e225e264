"""Which columns of a transformed table travel as text and which pass through in binary.

Why: a full load with transformations used to read every column as COPY text,
parse it in Polars, and send it back as COPY text that the target parsed again.
Most columns are never touched by a filter or a transformation: those now come
from the source in COPY binary and go to the target as the same bytes, parsed
by nobody. The columns the plan reads reach it as text, the pipeline's
convention: sent as text, or raw and printed here (binarytext.py); the columns
it writes reach the target through binarycodec's encoders.

Pure: decides from the plan and the target's column types; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import polars as pl
from psycopg import sql

from trempy_nb.pgcopy.binarycodec import Encoder, Tail, encoder_for, type_name
from trempy_nb.pgcopy.binarytext import decoder_for, numeric_decimal
from trempy_nb.pipeline.plan import TablePlan

RAW_PREFIX = "__trempy_raw__"

#: Built-in types (fixed OIDs, so their binary form, arrays included, means the same in any database).
BUILTIN = frozenset({
    "smallint", "integer", "bigint", "numeric", "real", "double precision", "money", "boolean",
    "text", "character varying", "character", "name", "bytea", "uuid", "json", "jsonb", "xml",
    "date", "time without time zone", "time with time zone", "timestamp without time zone",
    "timestamp with time zone", "interval", "inet", "cidr", "macaddr", "macaddr8", "bit",
    "bit varying", "point", "line", "lseg", "box", "path", "polygon", "circle", "tsvector",
    "tsquery", "oid", "pg_lsn", "int4range", "int8range", "numrange", "daterange", "tsrange",
    "tstzrange",
})

#: Types whose `::text` is their output function (others have casts of their own:
#: boolean::text is 'true', character::text drops the padding, inet::text adds the mask).
TEXT_CAST_IS_OUTPUT = frozenset({
    "smallint", "integer", "bigint", "numeric", "double precision", "real", "text", "character varying",
    "uuid", "json", "jsonb", "date", "timestamp without time zone", "timestamp with time zone", "bytea",
})


def base_type(pg_type: str) -> str:
    """'character varying(20)[]' -> 'character varying' (typmod and array brackets dropped)."""
    return type_name(pg_type.replace("[]", ""))


def _same_type(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


@dataclass(frozen=True)
class CopyLayout:
    """How one transformed table travels: the source SELECT and the target's COPY.

    The source sends first the columns the plan reads, then the raw columns the target
    takes as they came; those stay one uncut Tail per row. A read column comes as text
    (`col::text`), or raw when binarytext can print it as the source would: when the plan
    does not write it, that raw value is also the target's, and it is selected last of
    the read columns, where the tail begins (it is cut out for the plan and kept in the
    tail as well). The target's COPY lists the encoded columns, then the tail's, so each
    row goes out as those fields followed by the tail, byte for byte.
    """

    select: tuple[tuple[str, bool], ...]  # (source column, as text), in SELECT order
    names: tuple[str, ...]  # the frame column of each SELECT item before the tail
    decoded: tuple[tuple[str, str, str], ...]  # (raw frame column, source column, its type): text for the plan
    outputs: tuple[str, ...]  # per target column the plan's output gives, its frame column
    encoders: tuple[Encoder, ...]  # per such column
    columns: tuple[str, ...]  # target columns in COPY order: the encoded ones, then the tail's
    tail: Tail | None  # the columns the target takes raw, or None
    typed: tuple[tuple[str, int], ...] = ()  # (source column, scale): numeric read only by math, as Decimal
    decimals: tuple[str, ...] = ()  # exact math results nothing else reads: encoded from Decimal, no text

    @property
    def as_text(self) -> tuple[bool, ...]:
        return tuple(t for _, t in self.select[: len(self.names)])

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """The target columns whose values ride in the tail."""
        return self.columns[len(self.outputs):]

    def decode(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The text the plan reads, from the columns that came raw (or, for `typed` columns, the
        Decimal values math_expression would parse that text into: it casts either alike)."""
        if not self.decoded:
            return frame
        typed = dict(self.typed)
        columns = []
        for raw, col, kind in self.decoded:
            values = frame.get_column(raw)
            decimal = numeric_decimal(values, typed[col]) if col in typed else None
            columns.append((decimal if decimal is not None else decoder_for(kind)(values)).alias(col))  # type: ignore[misc]
        return frame.with_columns(columns)

    def apply(self, plan: TablePlan, frame: pl.DataFrame) -> pl.DataFrame:
        """A batch as read from the source, through the plan, as encode() takes it."""
        ctx = replace(plan.context(), decimals=frozenset(self.decimals))
        return self.shaped(plan.apply_some(self.decode(frame), ctx))

    def shaped(self, out: pl.DataFrame) -> pl.DataFrame:
        """The plan's output as encode() takes it: the encoded columns by target name, then the tail."""
        cut = (pl.col(o).alias(c) for o, c in zip(self.outputs, self.columns[: len(self.outputs)], strict=True))
        return out.select(*cut, *([self.tail.name] if self.tail else []))


def copy_layout(plan: TablePlan, target_types: dict[str, str], columns: Sequence[str],
                source_types: dict[str, str]) -> CopyLayout | None:
    """The layout for writing `columns` (target names), or None when the table must go as COPY text."""
    written = plan.writes
    if any(c.startswith(RAW_PREFIX) for c in {*plan.source_columns, *columns, *written}):
        return None
    read = set(plan.reads)
    riding: dict[str, str] = {}  # target column -> source column the plan reads raw that rides in the tail too
    raw: dict[str, str] = {}  # target column -> source column passed through in binary
    cut: dict[str, tuple[str, Encoder]] = {}  # target column -> (frame column, encoder)
    for name in columns:
        src = plan.source_column(name)
        ttype = target_types.get(name)
        if ttype is None:
            return None
        if (src is not None and name not in written
                and _same_type(source_types.get(src, ""), ttype) and base_type(ttype) in BUILTIN):
            if src in read and _decodable(source_types[src]):
                riding[name] = src  # one raw value: printed for the plan, and the target's bytes in the tail
            else:
                raw[name] = src  # a column the plan also reads as text comes twice
            continue
        enc = encoder_for(ttype)
        if enc is None:
            return None
        if src is not None and name not in written:
            read.add(src)
        cut[name] = (name, enc)
    lead = [c for c in plan.source_columns if c in read and c not in riding.values()]
    decodable = [c for c in lead if _decodable(source_types[c])] + list(riding.values())
    decoded = tuple((RAW_PREFIX + c, c, base_type(source_types[c])) for c in decodable)
    in_tail = list(riding.values()) + list(raw.values())
    as_decimal = plan.decimal_inputs  # numeric columns only exact math reads: as Decimal, not text
    numeric_outputs = {c for c, (_, enc) in cut.items() if enc is encoder_for("numeric")}
    return CopyLayout(
        select=tuple((c, c not in decodable) for c in lead) + tuple((c, False) for c in in_tail),
        names=tuple(RAW_PREFIX + c if c in decodable else c for c in [*lead, *riding.values()]),
        decoded=decoded,
        outputs=tuple(o for o, _ in cut.values()),
        encoders=tuple(e for _, e in cut.values()),
        columns=(*cut, *riding, *raw),
        tail=Tail(RAW_PREFIX, len(in_tail), len(riding)) if in_tail else None,
        typed=tuple((c, as_decimal[c]) for c in riding.values()
                    if base_type(source_types[c]) == "numeric" and c in as_decimal),
        decimals=tuple(c for c in plan.decimal_results if c in numeric_outputs),
    )


def _decodable(pg_type: str) -> bool:
    return "[]" not in pg_type and decoder_for(base_type(pg_type)) is not None


def select_sql(schema: str, table: str, layout: CopyLayout, source_types: dict[str, str]) -> sql.Composed:
    """SELECT of the layout's columns: raw ones as they are, text ones as their output text."""
    items = []
    for col, as_text in layout.select:
        ident = sql.Identifier(col)
        if not as_text:
            items.append(ident)
        elif base_type(source_types[col]) in TEXT_CAST_IS_OUTPUT and "[]" not in source_types[col]:
            items.append(sql.SQL("{}::text").format(ident))
        else:  # format('%s') calls the type's output function; NULL must stay NULL
            items.append(sql.SQL("CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END").format(c=ident))
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(items), sql.Identifier(schema, table))
