"""Pure tests of the writer's SQL builders: structure, and that every name is quoted."""

from __future__ import annotations

import re

import pytest
from psycopg import sql

from trempy_nb.catalog import ColumnInfo
from trempy_nb.writer import sql as w
from trempy_nb.writer import state
from trempy_nb.writer.ddl import TargetSpec

HOSTILE = ["Mixed Case", "semi;colon", 'quo"te', "drop table x; --", "sp ace"]
QUOTED = re.compile(r'"(?:[^"]|"")*"')


def spec(mode: str = "upsert") -> TargetSpec:
    cols = tuple(ColumnInfo(name, "text", True, i) for i, name in enumerate(HOSTILE))
    return TargetSpec(
        'Sch"ema; x',
        'Ta ble";--',
        cols,
        (HOSTILE[0], HOSTILE[2]),
        mode,
        "start;s",
        'end"e',
        "Cur Rent",
    )


def render(q: sql.Composable) -> str:
    return q.as_string()


def unquoted(text: str) -> str:
    """The statement with every quoted identifier and string literal removed."""
    return re.sub(r"'(?:[^']|'')*'", "''", QUOTED.sub('""', text))


def assert_names_quoted(text: str) -> None:
    rest = unquoted(text)
    assert ";" not in rest, text
    for bad in ("Mixed", "colon", "drop table", "sp ace", "Ta ble", "Cur Rent"):
        assert bad not in rest, (bad, text)


STG = w.staging_ident("_trempy_stg_0")


def all_statements() -> list[sql.Composable]:
    s = spec("scd2")
    u = spec("upsert")
    return [
        w.create_staging_sql(
            STG, u.ident, u.data_columns, {w.S_OP: "text", "_trempy_u0": "boolean"}
        ),
        w.analyze_sql(STG, [*u.key, w.S_OP]),
        w.fill_unchanged_sql(STG, u.ident, u.key, [(HOSTILE[1], "_trempy_u0")]),
        w.fill_unchanged_sql(STG, s.ident, s.key, [(HOSTILE[1], "_trempy_u0")], s.current_col),
        w.upsert_delete_sql(u.ident, STG, u.key),
        w.upsert_sql(u.ident, STG, u.data_columns, u.key),
        w.delete_all_sql(u.ident),
        w.scd2_close_sql(s.ident, STG, s),
        w.scd2_open_sql(s.ident, STG, s.data_columns, s),
        w.scd2_close_all_sql(s.ident, s),
        w.scd2_open_missing_sql(s.ident, STG, s.data_columns, s, sql.SQL("now()")),
        *w.merge_sql(u, sql.Literal("2024-01-02 03:04:05+00")),
        *w.merge_sql(s),
        state.state_exists_sql(),
        state.checkpoint_select_sql(True),
        state.checkpoint_upsert_sql(),
        state.checkpoint_delete_sql(),
        *state.state_tables_sql(),
    ]


@pytest.mark.parametrize("stmt", all_statements(), ids=lambda q: render(q).split()[0])
def test_every_name_is_quoted(stmt: sql.Composable) -> None:
    assert isinstance(stmt, sql.Composed)
    assert_names_quoted(render(stmt))


def test_identifier_quoting_doubles_quotes() -> None:
    text = render(w.delete_all_sql(spec().ident))
    assert text == 'DELETE FROM "Sch""ema; x"."Ta ble"";--"'


def test_staging_is_typed_like_target_without_constraints() -> None:
    u = spec()
    text = render(
        w.create_staging_sql(STG, u.ident, ["Mixed Case"], {w.S_OP: "text", w.S_TS: "timestamptz"})
    )
    assert text == (
        'CREATE TEMP TABLE "pg_temp"."_trempy_stg_0" ON COMMIT DROP AS SELECT t."Mixed Case",'
        ' NULL::text AS "_trempy_op", NULL::timestamptz AS "_trempy_ts"'
        ' FROM "Sch""ema; x"."Ta ble"";--" AS t WITH NO DATA'
    )


def test_staging_meta_types_are_whitelisted() -> None:
    with pytest.raises(ValueError):
        w.create_staging_sql(STG, spec().ident, ["a"], {"x": "text; DROP TABLE y"})


def test_upsert_updates_only_non_key_columns() -> None:
    u = spec()
    text = render(w.upsert_sql(u.ident, STG, u.data_columns, u.key))
    assert 'ON CONFLICT ("Mixed Case", "quo""te") DO UPDATE SET' in text
    set_part = text.split("DO UPDATE SET", 1)[1].split("RETURNING", 1)[0]
    assert '"semi;colon" = EXCLUDED."semi;colon"' in set_part
    assert '"Mixed Case" =' not in set_part and '"quo""te" =' not in set_part
    assert "(t.xmax = 0)" in text


def test_upsert_all_key_columns_does_nothing_on_conflict() -> None:
    text = render(w.upsert_sql(sql.Identifier("a", "b"), STG, ["k"], ["k"]))
    assert 'ON CONFLICT ("k") DO NOTHING' in text
    assert "DO UPDATE" not in text


def test_key_match_joins_every_key_column() -> None:
    u = spec()
    text = render(w.upsert_delete_sql(u.ident, STG, u.key))
    assert text.endswith('WHERE t."Mixed Case" = s."Mixed Case" AND t."quo""te" = s."quo""te"')


def test_fill_unchanged_reads_current_version_in_scd2() -> None:
    s = spec("scd2")
    text = render(
        w.fill_unchanged_sql(
            STG, s.ident, s.key, [("a", "_trempy_u0"), ("b", "_trempy_u1")], s.current_col
        )
    )
    assert '"a" = CASE WHEN s."_trempy_u0" THEN t."a" ELSE s."a" END' in text
    assert '(s."_trempy_u0" OR s."_trempy_u1")' in text
    assert text.endswith('AND t."Cur Rent"')
    with pytest.raises(ValueError):
        w.fill_unchanged_sql(STG, s.ident, s.key, [])


def test_scd2_close_then_open_use_validity_columns() -> None:
    s = spec("scd2")
    close = render(w.scd2_close_sql(s.ident, STG, s))
    assert 'SET "end""e" = s."_trempy_ts", "Cur Rent" = false' in close
    assert 'WHERE s."_trempy_first" AND t."Cur Rent" AND' in close
    opened = render(w.scd2_open_sql(s.ident, STG, s.data_columns, s))
    assert '"start;s", "end""e", "Cur Rent") SELECT' in opened
    assert opened.endswith("WHERE s.\"_trempy_op\" <> 'D'")
    close_all = render(w.scd2_close_all_sql(s.ident, s))
    assert close_all.count("%s") == 1 and close_all.endswith('WHERE "Cur Rent"')


def test_cdc_upsert_counts_what_the_plain_upsert_does() -> None:
    u = spec()
    plain = render(w.upsert_insert_sql(u.ident, STG, u.data_columns, u.key))
    assert plain.startswith('INSERT INTO "Sch""ema; x"."Ta ble"";--" AS t ("Mixed Case", ')
    assert 'SELECT s."Mixed Case", s."semi;colon", ' in plain
    assert render(w.upsert_sql(u.ident, STG, u.data_columns, u.key)) == (
        f"WITH w AS ({plain} RETURNING (t.xmax = 0) AS ins)"
        " SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM w"
    )


def test_full_load_merge_upserts_from_its_staging_table() -> None:
    u = spec()
    (stmt,) = w.merge_sql(u)
    assert render(stmt) == render(w.upsert_insert_sql(u.ident, sql.Identifier("trempy_stage"), u.data_columns, u.key))
    assert 'FROM "trempy_stage" AS s ON CONFLICT ("Mixed Case", "quo""te") DO UPDATE SET' in render(stmt)
    (other,) = w.merge_sql(u, staging=sql.Identifier("elsewhere"))
    assert 'FROM "elsewhere" AS s' in render(other)


def test_full_load_merge_scd2_closes_changed_versions_and_opens_missing_ones_at_load_time() -> None:
    s = spec("scd2")
    close, opened = (render(q) for q in w.merge_sql(s, sql.Literal("2024-01-02 03:04:05+00")))
    cols = ['"Mixed Case"', '"semi;colon"', '"quo""te"', '"drop table x; --"', '"sp ace"']
    t_row, s_row = (", ".join(f"{alias}.{c}" for c in cols) for alias in ("t", "s"))
    table = '"Sch""ema; x"."Ta ble"";--"'
    on_key = 't."Mixed Case" = s."Mixed Case" AND t."quo""te" = s."quo""te"'
    at = "'2024-01-02 03:04:05+00'"
    assert close == (
        f'UPDATE {table} AS t SET "end""e" = {at}, "Cur Rent" = false FROM "trempy_stage" AS s'
        f' WHERE ROW({t_row}) IS DISTINCT FROM ROW({s_row}) AND t."Cur Rent" AND {on_key}'
    )
    assert opened == (
        f'INSERT INTO {table} ({", ".join(cols)}, "start;s", "end""e", "Cur Rent")'
        f' SELECT {s_row}, {at}, NULL, true FROM "trempy_stage" AS s'
        f' WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE {on_key} AND t."Cur Rent")'
    )
    # without a load time, both happen at now(); CDC closes at each event's own commit time
    assert all("now()" in render(q) for q in w.merge_sql(s))
    assert 'SET "end""e" = s."_trempy_ts"' in render(w.scd2_close_sql(s.ident, STG, s))


def test_checkpoint_statements() -> None:
    assert (
        render(state.checkpoint_select_sql())
        == 'SELECT lsn FROM "trempy".checkpoints WHERE task = %s'
    )
    assert render(state.checkpoint_select_sql(for_update=True)).endswith("FOR UPDATE")
    assert render(state.checkpoint_upsert_sql()).count("%s") == 2
    assert render(state.checkpoint_delete_sql()).count("%s") == 1
    assert "'trempy'" in render(state.state_exists_sql())
