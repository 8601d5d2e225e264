"""COPY binary encoding of text frames, checked against PostgreSQL itself: the same frame sent as
COPY text and as COPY binary must land as the same rows; a value an encoder cannot convert
exactly makes its column travel as text (and the target casts it); COPY binary read from the
source passes through untouched."""

from __future__ import annotations

import polars as pl
import psycopg
import pytest
from psycopg import sql

from trempy_nb.db import connect
from trempy_nb.pgcopy.binarycodec import (
    Tail,
    describe_raw,
    encode,
    encoder_for,
    encoders_for,
    split_tail,
    type_name,
)
from trempy_nb.pgcopy.binarytext import decoder_for, numeric_decimal
from trempy_nb.pgcopy.copyio import copy_binary, iter_binary_frames
from trempy_nb.pgcopy.textcodec import read_copy_text, write_copy_text
from trempy_nb.pipeline.copylayout import RAW_PREFIX, CopyLayout, select_sql

TYPES = {
    "i2": "smallint", "i4": "integer", "i8": "bigint", "num": "numeric", "num2": "numeric(12,2)",
    "f8": "double precision", "t": "text", "vc": "character varying(20)", "ch": "character(3)",
    "b": "boolean", "d": "date", "ts": "timestamp without time zone", "ts3": "timestamp(3) without time zone",
    "tstz": "timestamp with time zone", "u": "uuid", "j": "jsonb", "js": "json", "by": "bytea",
}

VALUES = """
(1, 32767, 2147483647, 9223372036854775807, 123456789012345678901234567890.123456789, 12.5, 0.1,
 E'quote '' "dq" tab\\t nl\\n back\\\\slash \\\\N ünïcødé ✓', 'short', 'ab', true, '2024-02-29',
 '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+02',
 'A0EEBC99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2, {"b": null}]}', '{"x":1}', '\\x00ff10'),
(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(3, -32768, -2147483648, -9223372036854775808, -0.000001, -99.99, -1e300, '', '', '', false, '0001-01-01',
 '1999-12-31 23:59:59', '1970-01-01 00:00:00.0005', '1900-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000000',
 '[]', '[]', '\\x'),
(6, NULL, NULL, NULL, 'NaN', NULL, 'Infinity', NULL, NULL, NULL, NULL, 'infinity', 'infinity', '-infinity',
 '-infinity', NULL, NULL, NULL, NULL),
(7, NULL, NULL, NULL, 'Infinity', NULL, '-Infinity', NULL, NULL, NULL, NULL, '-infinity', '-infinity',
 'infinity', 'infinity', NULL, NULL, NULL, NULL),
(8, NULL, NULL, NULL, '-Infinity', NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL),
(4, 0, 0, 0, 0.00, 0, 5e-324, ' lead and trail ', 'x', 'a', NULL, '9999-12-31', '2000-01-01 00:00:00',
 NULL, '2000-01-01 00:00:00.000001+00', NULL, '"s"', 'null', NULL),
(5, -1, 10, 100, 10000.0001, 0.01, 1.7976931348623157e308, 'tab	inside', NULL, NULL, true, '2000-01-01',
 '0100-02-03 04:05:06.7', '2262-04-11 23:47:16.854775', '2024-06-30 23:59:59.999999+00', NULL, NULL, NULL, '\\x41')
"""


def _table(conn: psycopg.Connection, name: str) -> None:
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in TYPES.items())
    conn.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, {})").format(sql.Identifier(name), cols))


def _frame(conn: psycopg.Connection, table: str) -> pl.DataFrame:
    """The rows as the full load sees them: COPY text parsed into a String frame."""
    cur = conn.cursor()
    names = ["id", *TYPES]
    with cur.copy(sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(table))) as copy:
        data = b"".join(bytes(b) for b in copy)
    return read_copy_text(data, names)


def _load(conn: psycopg.Connection, table: str, payload: bytes | list, binary: bool) -> None:
    fmt = sql.SQL(" (FORMAT binary)") if binary else sql.SQL("")
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN{}").format(sql.Identifier(table), fmt)) as copy:
        for part in payload if isinstance(payload, list) else [payload]:
            copy.write(part)


def _rows(conn: psycopg.Connection, table: str) -> list[str]:
    """Each row as PostgreSQL prints it (exact: numeric scale, float digits, infinities)."""
    q = sql.SQL("SELECT r::text FROM {} AS r ORDER BY id").format(sql.Identifier(table))
    return [r[0] for r in conn.execute(q).fetchall()]


@pytest.fixture
def conn(target_uri: str):
    with connect(target_uri, autocommit=True) as c:
        for name in ("src", "via_text", "via_binary"):
            _table(c, name)
        yield c


ALL_TYPES = ["integer", *TYPES.values()]
NAMES = ["id", *TYPES]


def test_binary_lands_the_same_rows_as_text(conn: psycopg.Connection) -> None:
    conn.execute(f"INSERT INTO src VALUES {VALUES}")
    df = _frame(conn, "src")
    encoders = encoders_for(ALL_TYPES)
    assert encoders is not None
    payload, as_text = encode(df, encoders)
    assert as_text == []  # every value above, NaN and infinities included, has an exact binary form
    _load(conn, "via_text", write_copy_text(df), binary=False)
    _load(conn, "via_binary", payload, binary=True)
    expected = _rows(conn, "src")
    assert _rows(conn, "via_text") == expected
    assert _rows(conn, "via_binary") == expected
    assert len(expected) == 8 and "10000.0001" in expected[4] and ",0.00," in expected[3]  # scales kept


def test_binary_of_an_empty_frame_is_a_valid_copy(conn: psycopg.Connection) -> None:
    payload, _ = encode(_frame(conn, "src"), encoders_for(ALL_TYPES))  # type: ignore[arg-type]
    _load(conn, "via_binary", payload, binary=True)
    assert _rows(conn, "via_binary") == []


def test_values_without_an_exact_binary_form_travel_as_text_and_the_target_casts_them(
    conn: psycopg.Connection,
) -> None:
    conn.execute("INSERT INTO src (id, d, ts, tstz, num) VALUES (1, '0044-03-15 BC', '0044-03-15 12:00:00 BC',"
                 " '12345-01-01 00:00:00+00', 1.5), (2, '2024-01-01', '2024-01-01 00:00:00', NULL, NULL)")
    df = _frame(conn, "src")
    payload, as_text = encode(df, encoders_for(ALL_TYPES))  # type: ignore[arg-type]
    assert set(as_text) == {"d", "ts", "tstz"}
    types = dict(zip(NAMES, ALL_TYPES, strict=True))
    with conn.transaction():
        copy_binary(conn.cursor(), sql.Identifier("via_binary"), NAMES, payload, as_text, types)
    assert _rows(conn, "via_binary") == _rows(conn, "src")


def test_a_value_the_target_refuses_fails_the_copy_as_text_would(conn: psycopg.Connection) -> None:
    df = pl.DataFrame({"id": ["1"], "d": ["2024-02-30"]})
    payload, as_text = encode(df, [encoder_for("integer"), encoder_for("date")])  # type: ignore[list-item]
    assert as_text == ["d"]
    with pytest.raises(psycopg.errors.DatetimeFieldOverflow), conn.transaction():
        copy_binary(conn.cursor(), sql.Identifier("via_binary"), ["id", "d"], payload, as_text,
                    {"id": "integer", "d": "date"})
    assert _rows(conn, "via_binary") == []


@pytest.mark.parametrize("chunk", [64, 1 << 20])
def test_copy_binary_from_the_source_passes_through_and_text_columns_match_copy_text(
    conn: psycopg.Connection, chunk: int,
) -> None:
    conn.execute(f"INSERT INTO src VALUES {VALUES}")
    text_cols = {"t", "num", "tstz", "b", "ch"}
    items = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c)) if c in text_cols and c not in ("b", "ch")
        else sql.SQL("CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END").format(c=sql.Identifier(c))
        if c in text_cols else sql.Identifier(c)
        for c in NAMES
    )
    query = sql.SQL("SELECT {} FROM src ORDER BY id").format(items)
    as_text = [c in text_cols for c in NAMES]
    with connect(conn.info.dsn and _uri(conn)) as src:
        frames = list(iter_binary_frames(src.cursor(), query, NAMES, as_text, chunk_bytes=chunk))
    if chunk == 64:
        assert len(frames) > 1  # several batches: the header sits only in the first
    df = pl.concat(frames)
    reference = _frame(conn, "src").sort(pl.col("id").cast(pl.Int64))
    for c in text_cols:  # the text the plan sees is exactly what COPY text gives
        assert df.get_column(c).to_list() == reference.get_column(c).to_list(), c
    assert df.schema["i8"] == pl.Binary and df.schema["t"] == pl.String
    encoders = [None if not t else encoder_for(ty) for t, ty in zip(as_text, ALL_TYPES, strict=True)]
    payload, sent_as_text = encode(df, encoders)
    assert sent_as_text == []
    _load(conn, "via_binary", payload, binary=True)
    assert _rows(conn, "via_binary") == _rows(conn, "src")


def test_untouched_columns_travel_as_one_uncut_tail_per_row(conn: psycopg.Connection) -> None:
    """The full load's layout: columns the plan reads come first as text, the rest stay one
    Binary tail per row; rows are filtered; the target gets the encoded columns, then the tail."""
    conn.execute(f"INSERT INTO src VALUES {VALUES}")
    text_cols = ["id", "t", "num"]
    raw_cols = [c for c in NAMES if c not in text_cols]
    items = [sql.SQL("{}::text").format(sql.Identifier(c)) for c in text_cols]
    items += [sql.Identifier(c) for c in raw_cols]
    query = sql.SQL("SELECT {} FROM src").format(sql.SQL(", ").join(items))
    tail = Tail("rest", len(raw_cols))
    with connect(_uri(conn)) as src:
        frames = list(iter_binary_frames(src.cursor(), query, text_cols, [True] * 3, 64, tail))
    df = pl.concat(frames).filter(pl.col("id").cast(pl.Int64) % 2 == 1)  # a filter drops rows, tails follow
    assert df.columns == [*text_cols, "rest"] and df.schema["rest"] == pl.Binary
    encoders = [encoder_for("integer"), encoder_for("text"), encoder_for("numeric")]
    payload, as_text = encode(df, encoders, tail)  # type: ignore[arg-type]
    assert as_text == []
    copy_binary(conn.cursor(), sql.Identifier("via_binary"), [*text_cols, *raw_cols], payload)
    want = conn.execute("SELECT r::text FROM src AS r WHERE id % 2 = 1 ORDER BY id").fetchall()
    assert _rows(conn, "via_binary") == [r[0] for r in want] and len(want) == 4
    one = df.filter(pl.col("id") == "3").get_column("rest")[0]
    fields = split_tail(one, len(raw_cols))
    assert describe_raw(fields[raw_cols.index("i8")], "bigint") == -9223372036854775808  # type: ignore[arg-type]
    assert fields[raw_cols.index("u")] is not None and None not in fields
    two = df.filter(pl.col("id") == "7").get_column("rest")[0]
    assert split_tail(two, len(raw_cols))[raw_cols.index("i2")] is None  # NULL


def test_read_columns_the_target_takes_raw_are_cut_out_and_ride_in_the_tail_too(conn: psycopg.Connection) -> None:
    """A column the plan reads raw (printed by binarytext) and does not write is selected where the
    tail begins: cut out for the plan, and its field stays in the tail for the target."""
    conn.execute(f"INSERT INTO src VALUES {VALUES}")
    riding = ["i8", "num", "b"]  # read (decoded), then sent in the tail as they came
    rest = [c for c in NAMES if c not in riding and c != "t"]
    items = [sql.SQL("{}::text").format(sql.Identifier("t"))] + [sql.Identifier(c) for c in riding + rest]
    query = sql.SQL("SELECT {} FROM src").format(sql.SQL(", ").join(items))
    names = ["t", *(RAW_PREFIX + c for c in riding)]
    tail = Tail("rest", len(riding) + len(rest), len(riding))
    with connect(_uri(conn)) as src:
        frames = list(iter_binary_frames(src.cursor(), query, names, [True, False, False, False], 64, tail))
    df = pl.concat(frames)
    printed = {c: decoder_for(type_name(TYPES[c]))(df.get_column(RAW_PREFIX + c)) for c in riding}  # type: ignore[misc]
    reference = _frame(conn, "src")

    def bag(values: list[str | None]) -> list[str | None]:
        return sorted(values, key=lambda v: (v is None, v or ""))

    for c in riding:  # the plan sees exactly COPY text's values
        assert bag(printed[c].to_list()) == bag(reference.get_column(c).to_list()), c
    kept = df.filter(printed["b"].is_not_null())  # a filter on a riding column; the tails follow
    payload, as_text = encode(kept.select("t", "rest"), [encoder_for("text")], tail)  # type: ignore[list-item]
    assert as_text == []
    copy_binary(conn.cursor(), sql.Identifier("via_binary"), ["t", *riding, *rest], payload)
    want = conn.execute("SELECT r::text FROM src AS r WHERE b IS NOT NULL ORDER BY id").fetchall()
    assert _rows(conn, "via_binary") == [r[0] for r in want] and len(want) == 3
    fields = split_tail(kept.get_column("rest")[0], tail.fields)  # an error record reads every field back
    assert len(fields) == tail.fields and describe_raw(fields[2], "boolean") in (True, False)  # type: ignore[arg-type]


@pytest.mark.parametrize(("values", "scale", "decimal"), [
    (["0.00", "-0.01", "12.50", None, "9999999999.99", "-9999999999.99", "123.40"], 2, True),
    (["1", "-7", None, None], 0, True),
    ([None, None], 3, True),
    (["1.50", "NaN"], 2, False),  # NaN has no Decimal: the batch goes as text
    (["1.5", "2.25"], 2, False),  # an unconstrained column's scales differ
    (["123456789012345678.12"], 2, False),  # beyond int64
])
def test_numeric_values_become_the_decimals_their_text_parses_to(
        conn: psycopg.Connection, values: list[str | None], scale: int, decimal: bool) -> None:
    conn.execute("CREATE TABLE nums (k integer, v numeric)")
    conn.cursor().executemany("INSERT INTO nums VALUES (%s, %s::numeric)", list(enumerate(values)))
    query = sql.SQL("SELECT v FROM nums ORDER BY k")
    with connect(_uri(conn)) as src:
        raw = pl.concat(iter_binary_frames(src.cursor(), query, ["v"], [False])).get_column("v")
    got = numeric_decimal(raw, scale)
    if not decimal:
        assert got is None
        return
    assert got is not None and got.dtype == pl.Decimal(38, scale)
    assert got.to_list() == pl.Series(values, dtype=pl.String).cast(pl.Decimal(38, scale)).to_list()


def test_an_empty_binary_copy_reads_as_an_empty_frame(conn: psycopg.Connection) -> None:
    with connect(_uri(conn)) as src:
        frames = list(iter_binary_frames(src.cursor(), sql.SQL("SELECT id, t FROM src"), ["id", "t"], [False, True]))
    assert sum(f.height for f in frames) == 0


def test_raw_values_are_described_readably_in_error_records() -> None:
    assert describe_raw((42).to_bytes(8, "big"), "bigint") == 42
    assert describe_raw(b"caf\xc3\xa9", "character varying(10)") == "café"
    assert describe_raw((-1).to_bytes(4, "big", signed=True), "date") == "1999-12-31"
    assert describe_raw((1_500_000).to_bytes(8, "big"), "timestamp with time zone") == "2000-01-01 00:00:01.5+00"
    assert describe_raw(bytes.fromhex("0002000000000002000104b0"), "numeric(12,2)") == "1.12"
    assert describe_raw(b"\x01\x02", "inet") == "\\x0102"


def _uri(conn: psycopg.Connection) -> str:
    return conn.info.dsn + f" password={conn.info.password}"


@pytest.mark.parametrize(("pg_type", "text"), [
    ("numeric", "1e5"), ("smallint", "32768"), ("integer", "1.5"), ("bigint", "9223372036854775808"),
    ("boolean", "yes"), ("date", "0044-03-15 BC"), ("timestamp with time zone", "2024-01-01 00:00:00+02"),
    ("uuid", "not-a-uuid"), ("bytea", "escape\\000form"), ("double precision", "one"),
])
def test_a_value_binary_cannot_carry_exactly_sends_its_column_as_text(pg_type: str, text: str) -> None:
    enc = encoder_for(pg_type)
    assert enc is not None
    first = {"boolean": "t", "uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "bytea": "\\x00", "date": "2024-01-01",
             "timestamp with time zone": "2024-01-01 00:00:00+00"}.get(pg_type, "1")
    _, as_text = encode(pl.DataFrame({"c": [first, text, None]}), [enc])
    assert as_text == ["c"]
    _, as_text = encode(pl.DataFrame({"c": [first, None]}), [enc])
    assert as_text == []


@pytest.mark.parametrize("pg_type", ["integer[]", "interval", "time without time zone", "real", "mood", "inet"])
def test_types_without_an_encoder_travel_as_text(pg_type: str) -> None:
    assert encoder_for(pg_type) is None
    assert encoders_for(["integer", pg_type]) is None


@pytest.mark.parametrize("values", [
    ["1.50", "-0.01", "0.00", None, "123456789.12", "-99999999999999999999999999999999999.99"],  # one scale
    ["7", "-7", "0", "10000", "99999999999999999999999999999999999999"],  # no decimals, 38 digits
    ["0.0001", "-1.0000", "12345.6789"],  # four decimals: whole groups
    ["-9223372036854775808", "9223372036854775807", "0", None],  # the ends of int64
    ["92233720368547758.07", "-1.00", "0.10"],  # fits int64 only before scaling to whole groups
    ["1.5", "2.25", "-3.125", "4", "0.00000000001", "1" * 50 + ".5"],  # mixed scales, beyond Int128
])
def test_numeric_binary_matches_numeric_text(conn: psycopg.Connection, values: list[str | None]) -> None:
    conn.execute("CREATE TABLE nums (k integer, v numeric)")
    df = pl.DataFrame({"k": [str(i) for i in range(len(values))], "v": values})
    payload, as_text = encode(df, [encoder_for("integer"), encoder_for("numeric")])  # type: ignore[list-item]
    assert as_text == []
    _load(conn, "nums", payload, binary=True)
    got = [r[0] for r in conn.execute("SELECT v::text FROM nums ORDER BY k").fetchall()]
    assert got == values


def test_the_text_a_layout_selects_is_exactly_what_copy_text_gives(conn: psycopg.Connection) -> None:
    """copylayout reads text columns as `col::text` where that cast is the output function and as
    format('%s', col) elsewhere (boolean, character), or raw and printed by binarytext (integers,
    numeric, boolean): every type gives COPY text's exact text."""
    conn.execute(f"INSERT INTO src VALUES {VALUES}")
    conn.execute("INSERT INTO src (id, num, num2) VALUES (9, 123456789012345678901234.5, -0.05),"
                 " (10, -1234567890123456.78, 99999999.99), (11, 0.000000000000000000001, 0)")
    types = dict(zip(NAMES, ALL_TYPES, strict=True))
    for decode in (False, True):
        raw = {c for c in NAMES if decode and decoder_for(type_name(types[c])) is not None}
        assert not decode or raw == {"id", "i2", "i4", "i8", "num", "num2", "b"}
        layout = CopyLayout(
            select=tuple((c, c not in raw) for c in NAMES),
            names=tuple(RAW_PREFIX + c if c in raw else c for c in NAMES),
            decoded=tuple((RAW_PREFIX + c, c, type_name(types[c])) for c in NAMES if c in raw),
            outputs=(), encoders=(), columns=(), tail=None,
        )
        query = select_sql("public", "src", layout, types)
        with connect(_uri(conn)) as src:
            frames = iter_binary_frames(src.cursor(), query, layout.names, layout.as_text, 256)
            got = pl.concat(layout.decode(f).select(NAMES) for f in frames)
        want = _frame(conn, "src")
        assert got.sort(pl.col("id").cast(pl.Int64)).equals(want.sort(pl.col("id").cast(pl.Int64)))
