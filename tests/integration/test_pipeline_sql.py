"""The Polars pipeline agrees with PostgreSQL: filters vs filters_to_sql, transformations vs SQL,
and the COPY text codec vs a real COPY round trip."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import polars as pl
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from trempy_nb.catalog import describe_table
from trempy_nb.db import connect
from trempy_nb.pgcopy.textcodec import read_copy_text, write_copy_text
from trempy_nb.pipeline.filters import compile_filters, filter_expr, filters_to_sql, predicate_sql
from trempy_nb.pipeline.plan import compile_plan
from trempy_nb.pipeline.transformations import BatchContext
from trempy_nb.settings import FilterSpec, TaskSettings

SETUP = """
CREATE SCHEMA hr;
CREATE TABLE hr.emp (
  id integer PRIMARY KEY, first_name varchar(30), last_name text, code char(4),
  salary numeric(12,2), bonus numeric, rate double precision, score real,
  born date, hired timestamp, updated timestamptz, active boolean
);
INSERT INTO hr.emp VALUES
 (1, 'Ana', 'Smith', 'AB', 5000.00, 100.5, 1.5, 1.1, '1990-05-17', '2023-03-15 10:30:00.25', '2024-01-02 03:04:05.5+00', true),
 (2, 'bob', 'o''Neil', 'CD', 4999.99, 0, -2, 2.5, '2000-02-29', '2023-12-31 23:59:59.999999', '2023-12-31 23:59:59+00', false),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 'Carol', 'Ca_rol%', 'E\\F', 5000, -12.25, 1e20, -1.5, '2024-01-02', '2024-01-02 00:00:00', '2024-01-01 23:00:00-01', true),
 (5, '', 'x', 'AB  ', 10000.5, 12345678901234567890.123456789, 0, 0, 'infinity', '2024-06-30 12:00', 'infinity', false),
 (6, 'Dan', 'Tab	Name', 'ZZ', -0.01, 'NaN', 'NaN', 3.25, '1999-12-31', '1999-12-31 23:59:59', '1999-12-31 23:30:00-02', NULL);
"""

FILTERS: list[tuple[str, str, dict[str, Any]]] = [
    ("salary", "equals", {"value": 5000}),
    ("salary", "not_equals", {"value": "5000.00"}),
    ("salary", "greater_than", {"value": 4999.99}),
    ("salary", "greater_than_or_equal", {"value": "4999.99"}),
    ("bonus", "less_than", {"value": 0}),
    ("bonus", "less_than_or_equal", {"value": "100.50"}),
    ("bonus", "greater_than", {"value": "12345678901234567890.123456788"}),
    ("bonus", "equals", {"value": "12345678901234567890.1234567890"}),
    ("id", "between", {"lower": 2, "upper": 4}),
    ("id", "not_between", {"lower": 2, "upper": 4}),
    ("rate", "greater_than", {"value": 0}),
    ("rate", "less_than", {"value": 1e21}),
    ("score", "equals", {"value": 1.1}),
    ("score", "between", {"lower": -1.5, "upper": 2.5}),
    ("last_name", "starts_with", {"value": "Ca_"}),
    ("last_name", "ends_with", {"value": "%"}),
    ("last_name", "contains", {"value": "\t"}),
    ("last_name", "not_contains", {"value": "i"}),
    ("first_name", "equals", {"value": ""}),
    ("code", "equals", {"value": "AB"}),
    ("code", "ends_with", {"value": "B"}),
    ("code", "contains", {"value": "\\"}),
    ("first_name", "in", {"values": ["Ana", "bob", "nobody"]}),
    ("first_name", "not_in", {"values": ["Ana"]}),
    ("id", "in", {"values": [1, "4", 6.0]}),
    ("active", "equals", {"value": True}),
    ("active", "not_equals", {"value": "t"}),
    ("first_name", "is_null", {}),
    ("active", "is_not_null", {}),
    ("born", "greater_than", {"value": "2000-01-01"}),
    ("hired", "less_than", {"value": "2024-01-02 00:00:00.000001"}),
    ("updated", "greater_than_or_equal", {"value": "2024-01-02 00:00:00+00"}),
    ("updated", "equals", {"value": "2024-01-02 01:00:00+01:00"}),
    ("born", "date_equals", {"value": "1990-05-17"}),
    ("updated", "date_equals", {"value": "2024-01-02"}),
    ("hired", "date_greater_than", {"value": "2023-12-31"}),
    ("born", "date_greater_than", {"value": "2000-01-01"}),
    ("updated", "date_less_than", {"value": "2000-01-01"}),
    ("hired", "date_between", {"lower": "2023-03-15", "upper": "2024-01-02"}),
    ("updated", "date_between", {"lower": "1999-12-31", "upper": "2024-01-01"}),
]


@pytest.fixture
def emp(source_uri: str) -> tuple[str, Any, pl.DataFrame]:
    with connect(source_uri, autocommit=True) as conn:
        conn.execute(SETUP)
        table = describe_table(conn, "hr", "emp")
        with conn.cursor().copy("COPY hr.emp TO STDOUT") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
    return source_uri, table, read_copy_text(data, table.column_names)


def _spec(column: str, filter_type: str, inputs: dict[str, Any]) -> FilterSpec:
    return FilterSpec(
        schema_name="hr", table_name="emp", column_name=column, filter_type=filter_type, **inputs
    )


def test_every_filter_type_is_covered() -> None:
    from trempy_nb.settings import FILTER_TYPES

    assert {f[1] for f in FILTERS} == set(FILTER_TYPES)


def test_polars_filters_select_the_same_rows_as_sql(emp: tuple[str, Any, pl.DataFrame]) -> None:
    uri, table, frame = emp
    mismatches = []
    with connect(uri, autocommit=True) as conn:
        for column, filter_type, inputs in FILTERS:
            spec = _spec(column, filter_type, inputs)
            where, params = filters_to_sql([spec], table)
            query = sql.SQL("SELECT id FROM hr.emp WHERE {} ORDER BY id").format(where)
            in_sql = [r[0] for r in conn.execute(query, params).fetchall()]
            in_polars = [int(x) for x in frame.filter(filter_expr([spec], table))["id"]]
            if in_sql != in_polars:
                mismatches.append((column, filter_type, inputs, in_sql, in_polars))
    assert not mismatches


def test_combined_filters_match_sql(emp: tuple[str, Any, pl.DataFrame]) -> None:
    uri, table, frame = emp
    specs = [_spec("salary", "greater_than", {"value": 0}), _spec("last_name", "not_contains", {"value": "z"}),
             _spec("born", "date_less_than", {"value": "2025-01-01"})]  # fmt: skip
    where, params = filters_to_sql(specs, table)
    with connect(uri) as conn:
        rows = conn.execute(
            sql.SQL("SELECT id FROM hr.emp WHERE {} ORDER BY id").format(where), params
        ).fetchall()
    assert [r[0] for r in rows] == [int(x) for x in frame.filter(filter_expr(specs, table))["id"]]


def _settings(transformations: list[dict[str, Any]]) -> TaskSettings:
    return TaskSettings.model_validate({
        "task": {"task_name": "t", "source": "a", "target": "b"},
        "tables": [{"schema_name": "hr", "table_name": "emp"}],
        "transformations": [{"schema_name": "hr", "table_name": "emp", **t} for t in transformations],
    })  # fmt: skip


def test_transformations_match_sql(emp: tuple[str, Any, pl.DataFrame]) -> None:
    uri, table, frame = emp
    plan = compile_plan(
        _settings([
            {"priority": 1, "transformation_type": "modify_column_value", "contract": {"operation": "uppercase", "column_name": "last_name"}},
            {"priority": 2, "transformation_type": "create_column", "contract": {"operation": "concat", "new_column_name": "full", "depends_on": ["first_name", "last_name", "salary", "active", "born"], "separator": " "}},
            {"priority": 2, "transformation_type": "create_column", "contract": {"operation": "date_diff_years", "new_column_name": "age", "depends_on": ["born"]}},
            {"priority": 2, "transformation_type": "create_column", "contract": {"operation": "date_diff_years", "new_column_name": "tenure", "depends_on": ["hired"]}},
            {"priority": 2, "transformation_type": "create_column", "contract": {"operation": "date_diff_years", "new_column_name": "since", "depends_on": ["updated"]}},
            {"priority": 3, "transformation_type": "create_column", "contract": {"operation": "math_expression", "new_column_name": "total", "expression": "salary * 1.1 + id - salary / 3"}},
            {"priority": 3, "transformation_type": "create_column", "contract": {"operation": "math_expression", "new_column_name": "ftotal", "expression": "rate * 2 + id"}},
            {"priority": 3, "transformation_type": "create_column", "contract": {"operation": "literal", "new_column_name": "k", "value": "2024-02-29 10:00:00", "type": "timestamp"}},
            # same priority as the date_diff_years above, later in the list: runs after them
            {"priority": 2, "transformation_type": "modify_column_value", "contract": {"operation": "format_date", "column_name": "hired", "format": "%d/%m/%Y %H:%M"}},
        ]),
        table,
    )  # fmt: skip
    with connect(uri, autocommit=True) as conn:
        today = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        out = plan.apply(frame.filter(pl.col("id") != "6"), BatchContext(now=today))
        rows = conn.execute(
            """
            SELECT id, upper(last_name), concat_ws(' ', first_name, upper(last_name), salary, active, born),
                   date_part('year', age(born))::int, date_part('year', age(hired))::int,
                   date_part('year', age(updated))::int, salary * 1.1 + id - salary / 3,
                   rate * 2 + id, to_char(hired, 'DD/MM/YYYY HH24:MI')
            FROM hr.emp WHERE id <> 6 ORDER BY id
            """
        ).fetchall()
    assert out.columns == [c.name for c in plan.target_columns]
    for got, want in zip(out.iter_rows(named=True), rows, strict=True):
        assert int(got["id"]) == want[0]
        assert got["last_name"] == want[1]
        assert got["full"] == want[2]
        for name, expected in zip(("age", "tenure", "since"), want[3:6], strict=True):
            if expected is None or abs(expected) > 10000:  # NULL or infinity
                assert got[name] is None
            else:
                assert int(got[name]) == expected, (name, got)
        if want[6] is None:
            assert got["total"] is None
        else:
            assert abs(Decimal(got["total"]) - want[6]) < Decimal("1e-12"), got["total"]
        assert (None if got["ftotal"] is None else float(got["ftotal"])) == want[7]
        assert got["hired"] == want[8]
        assert got["k"] == "2024-02-29 10:00:00"


def test_transformed_text_is_valid_postgresql_input(
    emp: tuple[str, Any, pl.DataFrame], target_uri: str
) -> None:
    """Every created column's text loads into its declared output type."""
    _, table, frame = emp
    plan = compile_plan(
        _settings([
            {"priority": 2, "transformation_type": "create_column", "contract": {"operation": "datetime_now", "new_column_name": "now"}},
            {"priority": 2, "transformation_type": "create_column", "contract": {"operation": "math_expression", "new_column_name": "m", "expression": "bonus / 7 * id"}},
            {"priority": 2, "transformation_type": "create_column", "contract": {"operation": "literal", "new_column_name": "b", "value": True, "type": "boolean"}},
            {"priority": 2, "transformation_type": "create_column", "contract": {"operation": "date_diff_years", "new_column_name": "y", "depends_on": ["born"]}},
        ]),
        table,
    )  # fmt: skip
    out = plan.apply(frame.filter(pl.col("id") != "6"))
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type))
        for c in plan.target_columns
    )  # noqa: S608 - types from the catalog
    with connect(target_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE t ({})").format(cols))
        with conn.cursor().copy("COPY t FROM STDIN") as copy:
            copy.write(write_copy_text(out))
        with conn.cursor().copy("COPY t TO STDOUT") as copy:
            back = read_copy_text(b"".join(bytes(c) for c in copy), list(out.columns))
        now = conn.execute("SELECT now FROM t LIMIT 1").fetchone()[0]  # type: ignore[index]
    assert back.drop("m").equals(out.drop("m"))
    assert abs(now - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)


WEIRD = [
    "",
    "\\N",
    "\\",
    "\\\\n",
    "a\tb",
    "line\nbreak",
    "cr\rlf\r\n",
    "\b\f\v",
    "ünïcødé ✓ 😀",
    "\\.",
    "N",
    "NULL",
    " ",
]


def test_copy_text_round_trip_through_postgresql(source_uri: str) -> None:
    df = pl.DataFrame({"id": [str(i) for i in range(len(WEIRD) + 1)], "v": [*WEIRD, None]})
    with connect(source_uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE w (id int PRIMARY KEY, v text)")
        with conn.cursor().copy("COPY w FROM STDIN") as copy:
            copy.write(write_copy_text(df))
        stored = conn.execute("SELECT v FROM w ORDER BY id").fetchall()
        with conn.cursor().copy("COPY (SELECT id, v FROM w ORDER BY id) TO STDOUT") as copy:
            back = read_copy_text(b"".join(bytes(c) for c in copy), ["id", "v"])
    assert [r[0] for r in stored] == [*WEIRD, None]
    assert back.equals(df)


def test_params_are_never_formatted_into_sql(emp: tuple[str, Any, pl.DataFrame]) -> None:
    uri, table, _ = emp
    spec = _spec("last_name", "equals", {"value": "x'; DROP TABLE hr.emp; --"})
    where, params = filters_to_sql([spec], table)
    with psycopg.connect(uri, autocommit=True) as conn:
        assert conn.execute(
            sql.SQL("SELECT count(*) FROM hr.emp WHERE {}").format(where), params
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM hr.emp").fetchone() == (6,)


# -- OR groups: the grouped predicate in Polars, in SQL with parameters, in SQL inline ---------

MORE_ROWS = """
INSERT INTO hr.emp SELECT i,
  CASE WHEN i % 5 = 0 THEN NULL ELSE (ARRAY['Ana', 'bob', 'Carol', '', 'Dan'])[1 + i % 5] END,
  CASE WHEN i % 7 = 0 THEN NULL ELSE 'Ca_' || i END,
  CASE WHEN i % 6 = 0 THEN NULL ELSE (ARRAY['AB', 'CD', 'ZZ'])[1 + i % 3] END,
  CASE WHEN i % 4 = 0 THEN NULL ELSE round((i * 617 % 12000)::numeric / 1.7, 2) - 1000 END,
  (i * 37 % 200)::numeric / 4 - 20,
  CASE WHEN i % 9 = 0 THEN NULL ELSE i * 1.5 - 20 END,
  (i % 5) - 1.5,
  date '1990-01-01' + i * 300,
  timestamp '2023-03-15' + i * interval '17 days 3 hours',
  timestamptz '1999-12-31 00:00+00' + i * interval '200 days 5 hours',
  CASE i % 3 WHEN 0 THEN NULL WHEN 1 THEN true ELSE false END
FROM generate_series(7, 60) i;
"""


@pytest.fixture(scope="module")
def emp_once(pg_cluster: Any) -> Iterator[tuple[psycopg.Connection, Any, pl.DataFrame]]:
    """hr.emp with 60 rows, created once for this module's grouped-filter tests (read only)."""
    uri = pg_cluster.create_database(f"grp_{uuid.uuid4().hex[:10]}")
    with connect(uri, autocommit=True) as conn:
        conn.execute(SETUP)
        conn.execute(MORE_ROWS)
        table = describe_table(conn, "hr", "emp")
        with conn.cursor().copy("COPY hr.emp TO STDOUT") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        yield conn, table, read_copy_text(data, table.column_names)


def _ids_three_ways(
    conn: psycopg.Connection, table: Any, frame: pl.DataFrame, specs: list[FilterSpec]
) -> tuple[list[int], list[int], list[int]]:
    """(Polars, SQL with bound parameters, SQL with the values inline) ids, in id order."""
    where, params = filters_to_sql(specs, table)
    select = sql.SQL("SELECT id FROM hr.emp WHERE {} ORDER BY id")
    bound = [r[0] for r in conn.execute(select.format(where), params).fetchall()]
    inline = predicate_sql(compile_filters(specs, table))
    literal = [r[0] for r in conn.execute(select.format(inline)).fetchall()]
    in_polars = [int(x) for x in frame.filter(filter_expr(specs, table)).sort(pl.col("id").cast(pl.Int64))["id"]]
    return in_polars, bound, literal


def _by_set_algebra(conn: psycopg.Connection, table: Any, specs: list[FilterSpec]) -> list[int]:
    """The grouped predicate's rows computed independently: each filter alone in SQL, a group
    is the union of its filters' rows, the result the intersection of the groups and the
    ungrouped filters (all rows when there is no filter)."""
    every = {r[0] for r in conn.execute("SELECT id FROM hr.emp").fetchall()}
    terms: dict[Any, set[int]] = {}
    for i, spec in enumerate(specs):
        where, params = filters_to_sql([spec], table)
        hit = {r[0] for r in conn.execute(sql.SQL("SELECT id FROM hr.emp WHERE {}").format(where), params)}
        key = ("group", spec.or_group) if spec.or_group is not None else ("alone", i)
        terms[key] = terms.get(key, set()) | hit
    out = set(every)
    for rows in terms.values():
        out &= rows
    return sorted(out)


def _g(group: str | None, column: str, filter_type: str, inputs: dict[str, Any]) -> FilterSpec:
    return _spec(column, filter_type, {**inputs, "or_group": group})


GROUPED_CASES: list[list[FilterSpec]] = [
    # department-style: (salary = 5000 OR rate > 0) AND active IS NOT NULL
    [_g("pay", "salary", "equals", {"value": 5000}), _g("pay", "rate", "greater_than", {"value": 0}),
     _g(None, "active", "is_not_null", {})],
    # a group of one, and NULL in one branch: (first_name IS NULL) AND (code = 'AB' OR bonus < 0)
    [_g("one", "first_name", "is_null", {}), _g("g", "code", "equals", {"value": "AB"}),
     _g("g", "bonus", "less_than", {"value": 0})],
    # two groups interleaved with ungrouped filters, every family of filter type
    [_g("a", "last_name", "starts_with", {"value": "Ca_"}), _g(None, "id", "not_between", {"lower": 20, "upper": 30}),
     _g("b", "hired", "date_between", {"lower": "2023-03-15", "upper": "2024-06-30"}),
     _g("a", "first_name", "in", {"values": ["Ana", "bob"]}), _g("b", "updated", "date_less_than", {"value": "2005-01-01"}),
     _g("b", "score", "equals", {"value": 1.1}), _g("a", "born", "greater_than", {"value": "2030-01-01"})],
    # negative operators inside a group keep NULL out of each branch
    [_g("neg", "first_name", "not_in", {"values": ["Ana"]}), _g("neg", "last_name", "not_contains", {"value": "1"}),
     _g("neg", "salary", "not_equals", {"value": "5000.00"})],
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(GROUPED_CASES)))
def test_grouped_filters_select_the_same_rows_in_polars_and_sql(
    emp_once: tuple[psycopg.Connection, Any, pl.DataFrame], case: int
) -> None:
    conn, table, frame = emp_once
    specs = GROUPED_CASES[case]
    in_polars, bound, literal = _ids_three_ways(conn, table, frame, specs)
    expected = _by_set_algebra(conn, table, specs)
    assert in_polars == bound == literal == expected
    assert 0 < len(expected) < frame.height  # each case keeps some rows and drops some


@st.composite
def grouped_filter_sets(draw: Any) -> list[FilterSpec]:
    """1 to 6 filters drawn from FILTERS (every type), each in no group or one of three."""
    picks = draw(st.lists(st.sampled_from(FILTERS), min_size=1, max_size=6))
    groups = draw(st.lists(st.sampled_from([None, "a", "b", "c"]), min_size=len(picks), max_size=len(picks)))
    return [_g(g, column, filter_type, inputs) for (column, filter_type, inputs), g in zip(picks, groups, strict=True)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=grouped_filter_sets())
def test_random_grouped_filter_sets_agree_between_polars_and_the_sql_push_down(
    emp_once: tuple[psycopg.Connection, Any, pl.DataFrame], specs: list[FilterSpec]
) -> None:
    conn, table, frame = emp_once
    in_polars, bound, literal = _ids_three_ways(conn, table, frame, specs)
    assert in_polars == bound == literal == _by_set_algebra(conn, table, specs)


def test_preview_pushes_the_grouped_predicate_down(source_uri: str, trempy_home: Any) -> None:
    """Task.preview with a limit returns the first rows that satisfy the groups (SQL side)."""
    from trempy_nb.task import Task

    with connect(source_uri, autocommit=True) as conn:
        conn.execute(SETUP)
        conn.execute(MORE_ROWS)
    group = [{"schema_name": "hr", "table_name": "emp", **f} for f in (
        {"column_name": "salary", "filter_type": "equals", "value": 5000, "or_group": "g"},
        {"column_name": "id", "filter_type": "greater_than", "value": 55, "or_group": "g"},
        {"column_name": "active", "filter_type": "is_not_null"},
    )]  # fmt: skip
    task = Task.from_settings({
        "task": {"task_name": "grp_preview", "source": source_uri, "target": source_uri},
        "tables": [{"schema_name": "hr", "table_name": "emp"}], "filters": group,
    })  # fmt: skip
    shown = sorted(task.preview(limit=100)["id"].to_list())
    with connect(source_uri) as conn:
        want = [r[0] for r in conn.execute(
            "SELECT id FROM hr.emp WHERE (salary = 5000 OR id > 55) AND active IS NOT NULL ORDER BY id")]
    assert shown == want and len(want) >= 3
    assert len(task.preview(limit=2)) == 2
