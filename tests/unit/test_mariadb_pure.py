"""The MariaDB target's pure parts: quoting, URIs, type mapping, value rewriting, key length."""

from __future__ import annotations

import json

import polars as pl
import pytest

from trempy_nb.catalog import ColumnInfo
from trempy_nb.errors import SettingsError, ValidationFailed
from trempy_nb.redact import mask
from trempy_nb.writer.ddl import TargetSpec
from trempy_nb.writer.mariadb import capabilities, ddl, names, types, uri


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("plain", "`plain`"),
        ("we`ird", "`we``ird`"),
        ("``", "``````"),
        ("a'b\"c;DROP TABLE x;--", "`a'b\"c;DROP TABLE x;--`"),
        ("50%", "`50%%`"),  # PyMySQL formats with %: `execute` turns %% back into %
    ],
)
def test_quote_doubles_backticks(name: str, quoted: str) -> None:
    assert names.quote(name) == quoted


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 65, "trailing "])
def test_quote_refuses_what_mariadb_cannot_name(bad: str) -> None:
    with pytest.raises(ValueError):
        names.quote(bad)


def test_uri_parse_and_mask() -> None:
    t = uri.parse("mariadb://app:p%40ss%3Aw0rd@db.example:3307/reports?ssl=1")
    assert (t.host, t.port, t.user, t.password, t.database) == ("db.example", 3307, "app", "p@ss:w0rd", "reports")
    assert "p@ss" not in repr(t) and "p@ss" not in t.masked()
    assert uri.parse("mysql://root@127.0.0.1/test").port == 3306
    assert mask("mysql://app:hunter22@h/db") == "mysql://app:***@h/db"
    with pytest.raises(SettingsError, match="names no database"):
        uri.parse("mysql://app:hunter22@h")
    with pytest.raises(SettingsError) as info:
        uri.parse("mysql://app:hunter22@h:notaport/db")
    assert "hunter22" not in str(info.value)


@pytest.mark.parametrize(
    ("pg_type", "sql"),
    [
        ("smallint", "SMALLINT"), ("integer", "INT"), ("bigint", "BIGINT"),
        ("numeric(12,2)", "DECIMAL(12,2)"), ("numeric(10)", "DECIMAL(10,0)"), ("numeric", "DECIMAL(65,30)"),
        ("real", "FLOAT"), ("double precision", "DOUBLE"),
        ("text", "LONGTEXT"), ("character varying(40)", "VARCHAR(40)"), ("character(3)", "VARCHAR(3)"),
        ("boolean", "BOOLEAN"), ("date", "DATE"),
        ("timestamp without time zone", "DATETIME(6)"), ("timestamp with time zone", "DATETIME(6)"),
        ("time without time zone", "TIME(6)"), ("uuid", "UUID"), ("jsonb", "JSON"), ("json", "JSON"),
        ("integer[]", "JSON"), ("text[]", "JSON"), ("bytea", "LONGBLOB"), ("interval", "LONGTEXT"),
        ("inet", "LONGTEXT"), ("mood", "LONGTEXT"),
    ],
)
def test_type_mapping(pg_type: str, sql: str) -> None:
    assert types.mariadb_type(pg_type).sql == sql


def test_type_mapping_keys_and_old_servers() -> None:
    assert types.mariadb_type("text", key=True).sql == "VARCHAR(255)"
    assert types.mariadb_type("bytea", key=True).sql == "VARBINARY(3072)"
    assert types.mariadb_type("uuid", native_uuid=False).sql == "CHAR(36)"


def test_load_text_rewrites_only_what_mariadb_reads_differently() -> None:
    pg = {"b": "boolean", "ts": "timestamp with time zone", "raw": "bytea", "arr": "text[]", "n": "numeric[]",
          "t": "text"}
    mapped = {k: types.mariadb_type(v) for k, v in pg.items()}
    df = pl.DataFrame({
        "b": ["t", "f", None],
        "ts": ["2024-01-01 12:00:00.5+02", "infinity", "12024-01-01 00:00:00+00"],
        "raw": ["\\x00ff", "\\000", None],
        "arr": ['{a,"b c","q\\"d",NULL}', "{}", '{{"x"},{"y"}}'],
        "n": ["{1.50,-2}", "{NaN}", None],
        "t": ["t", "as is", None],
    })
    out = types.to_load_text(df, mapped, pg)
    assert out["b"].to_list() == ["1", "0", None]
    # UTC; what MariaDB cannot hold stays as written, for the server to refuse
    assert out["ts"].to_list() == ["2024-01-01 10:00:00.500000", "infinity", "12024-01-01 00:00:00+00"]
    assert out["raw"].to_list() == ["00ff", "not hex: \\000", None]
    assert [json.loads(v) for v in out["arr"].to_list()] == [["a", "b c", 'q"d', None], [], [["x"], ["y"]]]
    assert out["n"][0] == "[1.50, -2]"  # exact digits
    assert out["n"][1].startswith("not a JSON array")
    assert out["t"].to_list() == ["t", "as is", None]


def _spec(*cols: ColumnInfo, key: tuple[str, ...], mode: str = "upsert") -> TargetSpec:
    return TargetSpec("hr", "employee", cols, key, mode)


def test_key_length_is_validated_in_one_line() -> None:
    ok = _spec(ColumnInfo("id", "integer"), ColumnInfo("code", "varchar(700)"), key=("id", "code"))
    ddl.check_key_length(ok, ddl.column_types(ok))
    long = _spec(ColumnInfo("code", "character varying(1000)"), key=("code",))
    with pytest.raises(ValidationFailed) as info:
        ddl.check_key_length(long, ddl.column_types(long))
    assert "\n" not in str(info.value) and "3072" in str(info.value) and "hr.employee" in str(info.value)
    blob = _spec(ColumnInfo("doc", "jsonb"), key=("doc",))
    with pytest.raises(ValidationFailed, match="cannot index"):
        ddl.check_key_length(blob, ddl.column_types(blob))


def test_scd2_ddl_enforces_one_current_version() -> None:
    spec = _spec(ColumnInfo("id", "integer"), ColumnInfo("name", "text"), key=("id",), mode="scd2")
    text = ddl.create_table_sql(spec, ddl.column_types(spec))
    assert "`_trempy_current` TINYINT GENERATED ALWAYS AS (IF(`scd_current`, 1, NULL)) STORED" in text
    assert "UNIQUE KEY `current_uq` (`id`, `_trempy_current`)" in text
    assert "PRIMARY KEY" not in text


def test_missing_privileges_reads_grants() -> None:
    assert capabilities.missing_privileges(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"], "db") == []
    got = capabilities.missing_privileges(["GRANT USAGE ON *.* TO `u`@`%`",
                                           "GRANT SELECT, INSERT ON `db`.* TO `u`@`%`"], "db")
    assert "UPDATE" in got and "SELECT" not in got
