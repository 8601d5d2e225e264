"""Catalog introspection of many tables in one query agrees with the per-table description."""

from __future__ import annotations

import psycopg
import pytest

from trempy_nb.catalog import describe_table, describe_tables
from trempy_nb.errors import ValidationFailed


def test_describe_tables_in_one_query(source_uri: str) -> None:
    with psycopg.connect(source_uri, autocommit=True) as c:
        c.execute('CREATE SCHEMA "Sch ema"')
        c.execute('CREATE TABLE "Sch ema"."Mixed Case" ("X y" int, z text NOT NULL, w jsonb, PRIMARY KEY (z, "X y"))')
        c.execute('CREATE TABLE "Sch ema".ri (a int NOT NULL, b text NOT NULL, c int[], UNIQUE (b, a))')
        c.execute('ALTER TABLE "Sch ema".ri REPLICA IDENTITY USING INDEX ri_b_a_key')
        c.execute('CREATE TABLE "Sch ema".full_ri (a int, b text)')
        c.execute('ALTER TABLE "Sch ema".full_ri REPLICA IDENTITY FULL')
        keys = [("Sch ema", "Mixed Case"), ("Sch ema", "missing"), ("Sch ema", "ri"), ("Sch ema", "full_ri")]
        many = describe_tables(c, keys)
        assert list(many) == keys and many[("Sch ema", "missing")] is None
        mixed = many[("Sch ema", "Mixed Case")]
        assert mixed is not None and mixed.primary_key == ("z", "X y") and mixed.identity_columns == ("z", "X y")
        assert [(col.name, col.pg_type, col.nullable) for col in mixed.columns] == [
            ("X y", "integer", False), ("z", "text", False), ("w", "jsonb", True)]
        ri = many[("Sch ema", "ri")]
        assert ri is not None and ri.primary_key == () and ri.identity_columns == ("b", "a")
        assert ri.column("c") is not None and ri.column("c").pg_type == "integer[]"  # type: ignore[union-attr]
        full = many[("Sch ema", "full_ri")]
        assert full is not None and full.identity_columns == ("a", "b") and full.replica_identity == "f"
        for key in keys:
            if many[key] is not None:
                assert describe_table(c, *key) == many[key]
        with pytest.raises(ValidationFailed, match="Mixed Case"):
            describe_table(c, "Sch ema", "missing")
