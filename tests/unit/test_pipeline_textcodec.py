"""COPY text format codec: escapes, nulls, empty strings, round trips."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from trempy_nb.pgcopy.textcodec import (
    decode_copy_text,
    encode_copy_text,
    read_copy_text,
    write_copy_text,
)


def test_decode_handles_escaped_backslash_before_letters() -> None:
    df = pl.DataFrame(
        {
            "a": ["x\\\\ny", "a\\tb\\nc\\rd\\be\\ff\\vg", "\\\\\\\\", "plain"],
            "b": ["1", "2", "3", "4"],
        }
    )
    out = decode_copy_text(df)
    assert out["a"].to_list() == ["x\\ny", "a\tb\nc\rd\be\ff\vg", "\\\\", "plain"]
    assert out["b"].to_list() == ["1", "2", "3", "4"]


def test_encode_is_the_inverse() -> None:
    raw = pl.DataFrame({"a": ["x\\ny", "a\tb\nc\rd\be\ff\vg", "\\N", None, ""]})
    encoded = encode_copy_text(raw)
    assert encoded["a"].to_list() == ["x\\\\ny", "a\\tb\\nc\\rd\\be\\ff\\vg", "\\\\N", None, ""]
    assert decode_copy_text(encoded).equals(raw)


def test_untouched_frames_are_returned_as_is() -> None:
    df = pl.DataFrame({"a": ["1", "2"]})
    assert decode_copy_text(df) is df
    assert encode_copy_text(df) is df


def test_read_copy_text_nulls_and_empty_strings() -> None:
    data = b"1\t\\N\t\n2\t\t\\\\N\n"
    df = read_copy_text(data, ["id", "a", "b"])
    assert df.schema == {"id": pl.String, "a": pl.String, "b": pl.String}
    assert df.rows() == [("1", None, ""), ("2", "", "\\N")]


def test_zero_rows() -> None:
    empty = read_copy_text(b"", ["a", "b"])
    assert empty.shape == (0, 2)
    assert empty.schema == {"a": pl.String, "b": pl.String}
    assert write_copy_text(empty) == b""


def test_single_empty_string_column_survives() -> None:
    df = pl.DataFrame({"a": ["", None, ""]})
    assert read_copy_text(write_copy_text(df), ["a"]).equals(df)


def test_write_copy_text_bytes() -> None:
    df = pl.DataFrame({"a": ["x\ty", None], "b": ["é", "a\\b"]})
    assert write_copy_text(df) == "x\\ty\té\n\\N\ta\\\\b\n".encode()


def test_write_copy_text_renders_typed_columns() -> None:
    df = pl.DataFrame({"a": [True, False, None], "b": [1, 2, None]})
    assert write_copy_text(df) == b"t\t1\nf\t2\n\\N\t\\N\n"


text_values = st.one_of(
    st.none(),
    st.sampled_from(["", "\\N", "\\", "\\\\n", "\t", "\n", "\r\n", "a\\tb", "\\.", "é€😀"]),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        max_size=20,
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=4).flatmap(
        lambda ncols: st.lists(st.tuples(*[text_values] * ncols), max_size=8).map(
            lambda rows: (ncols, rows)
        )
    )
)
def test_round_trip_property(case: tuple[int, list[tuple[str | None, ...]]]) -> None:
    ncols, rows = case
    columns = [f"c{i}" for i in range(ncols)]
    df = pl.DataFrame(rows, schema={c: pl.String for c in columns}, orient="row")
    back = read_copy_text(write_copy_text(df), columns)
    assert back.equals(df)
