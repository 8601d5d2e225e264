"""The MariaDB side of a diff as SQL text, built without I/O: canonical text, fingerprints, the staged comparison.

The canonical text of a value is the one `sqlgen.canonical_text` renders on the PostgreSQL source
(docs/reconcile.md): integers and text as stored; DECIMAL with its trailing fractional zeros cut;
BOOLEAN 1/0; DATETIME(6) as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC, as the writer stores it); TIME(6)
likewise; binary as lowercase hex; arrays (JSON) compact; JSON as stored. A row is `len:value` per
column (NULL: `N`) joined by commas, hashed with md5 like the source, so the fingerprints of one
bucket agree on both servers exactly when its rows do (up to a float's written form, which only makes
a bucket a suspect: the staged comparison compares the values themselves).

Names go through `writer.mariadb.names.quote`; values are %s parameters. Every statement goes
through `names.execute` (PyMySQL %-formatting), so a literal % is written %%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from trempy_nb.reconcile.sqlgen import INTEGER_TYPES, DiffShape, Selection
from trempy_nb.writer.mariadb.names import column_list, key_match, qualified, quote
from trempy_nb.writer.mariadb.types import MariaType

#: temporary tables of a diff's session: the staged source rows, a selection of keys, the keys a repair fixes
STAGE = "_trempy_diff_src"
SELECTED = "_trempy_diff_sel"
KEYS = "_trempy_diff_keys"

Types = Mapping[str, MariaType]


def canonical_text(expr: str, mt: MariaType) -> str:
    """A value of MariaDB type `mt` as its canonical text (NULL kept)."""
    kind = mt.sql.upper()
    text = f"CAST({expr} AS CHAR)"
    if kind.startswith("DECIMAL"):
        return f"IF(LOCATE('.', {text}) > 0, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {text})), {text})"
    if kind.startswith("DATETIME"):
        return f"DATE_FORMAT({expr}, '%%Y-%%m-%%d %%H:%%i:%%s.%%f')"
    if mt.load == "hex":
        return f"LOWER(HEX({expr}))"
    if mt.load == "array":
        return f"JSON_COMPACT({expr})"
    return text


def key_text(expr: str, mt: MariaType) -> str:
    """A key value as text the source parses back into its type (bytea: '\\x' and hex)."""
    if mt.load == "hex":
        return f"CONCAT('\\\\x', LOWER(HEX({expr})))"
    return canonical_text(expr, mt)


def key_from_text(mt: MariaType) -> str:
    """The placeholder of a key given as `key_text`, in the column's type."""
    return "UNHEX(SUBSTR(%s, 3))" if mt.load == "hex" else "%s"


def canonical_row(texts: Sequence[str]) -> str:
    """Canonical value texts joined as the source joins them (sqlgen.canonical_row)."""
    if not texts:
        return "''"
    return "CONCAT_WS(',', " + ", ".join(f"IFNULL(CONCAT(CHAR_LENGTH({t}), ':', {t}), 'N')" for t in texts) + ")"


def hash_expr(text: str, bits: int) -> str:
    """The first `bits` // 4 hex digits of the text's md5 as an unsigned integer (sqlgen.hash_expr's md5)."""
    return f"CAST(CONV(SUBSTR(MD5({text}), 1, {bits // 4}), 16, 10) AS UNSIGNED)"


def bucket_expr(shape: DiffShape, types: Types, alias: str, buckets: int) -> str:
    """The bucket of a target row from its key (sqlgen.bucket_expr on the source gives the same)."""
    n = int(buckets)
    keys = [f"{alias}.{quote(k)}" for k in shape.key]
    if len(keys) == 1 and shape.types[shape.key[0]] in INTEGER_TYPES:
        return f"MOD(MOD({keys[0]}, {n}) + {n}, {n})"
    text = canonical_row([canonical_text(k, types[c]) for k, c in zip(keys, shape.key, strict=True)])
    return f"MOD({hash_expr(text, 31)}, {n})"


def current(shape: DiffShape, alias: str = "t") -> str | None:
    """SCD2: only the current versions are what the target holds now."""
    return f"{alias}.{quote(shape.spec.current_col)} = 1" if shape.spec.scd2 else None


def _where(*parts: str | None) -> str:
    present = [f"({p})" for p in parts if p is not None]
    return f" WHERE {' AND '.join(present)}" if present else ""


def fingerprints_sql(shape: DiffShape, types: Types, buckets: int) -> str:
    """Per bucket of the target's (current) rows: bucket, row count, sum of row hashes."""
    row = canonical_row([canonical_text(f"t.{quote(c)}", types[c]) for c in shape.compared])
    inner = (f"SELECT {bucket_expr(shape, types, 't', buckets)} AS b, {hash_expr(row, 60)} AS h"
             f" FROM {qualified(shape.spec.schema, shape.spec.table)} AS t{_where(current(shape))}")
    return f"SELECT b, COUNT(*), SUM(h) FROM ({inner}) AS x GROUP BY b"


def create_like_sql(name: str, shape: DiffShape, columns: Sequence[str]) -> str:
    """A TEMPORARY table with the target's `columns` (their types), indexed on the key."""
    return (f"CREATE TEMPORARY TABLE {quote(name)} (KEY ({column_list(shape.key)})) ENGINE=InnoDB"
            f" AS SELECT {column_list(columns, 't')} FROM {qualified(shape.spec.schema, shape.spec.table)} AS t"
            " WHERE FALSE")


def drop_sql(name: str) -> str:
    return f"DROP TEMPORARY TABLE IF EXISTS {quote(name)}"


def fill_keys_sql(name: str, shape: DiffShape, types: Types) -> str:
    """One key (as key texts) into a keys table: executemany's statement."""
    values = ", ".join(key_from_text(types[k]) for k in shape.key)
    return f"INSERT INTO {quote(name)} ({column_list(shape.key)}) VALUES ({values})"


def _selected(shape: DiffShape, types: Types, sel: Selection, alias: str) -> str | None:
    if sel.keys is not None:
        if not sel.keys:
            return "FALSE"
        keys = ", ".join(f"{alias}.{quote(k)}" for k in shape.key)
        return f"({keys}) IN (SELECT {column_list(shape.key)} FROM {quote(SELECTED)})"
    if sel.buckets is not None:
        listed = ", ".join(str(int(b)) for b in sel.buckets) or "NULL"
        return f"{bucket_expr(shape, types, alias, sel.bucket_count)} IN ({listed})"
    return None


def _same(shape: DiffShape, types: Types, column: str, json_normalize: bool) -> str:
    """Whether s.column and t.column hold one value: as bytes of their canonical texts; JSON as
    normalised JSON (key order and spacing aside) where the server can normalise it."""
    mt = types[column]
    s, t = f"s.{quote(column)}", f"t.{quote(column)}"
    if json_normalize and mt.sql.upper() == "JSON" and mt.load != "array":
        s, t = f"JSON_NORMALIZE({s})", f"JSON_NORMALIZE({t})"
    else:
        s, t = canonical_text(s, mt), canonical_text(t, mt)
    return f"CAST({s} AS BINARY) <=> CAST({t} AS BINARY)"


def _keys_out(shape: DiffShape, types: Types, alias: str) -> str:
    typed = [f"{alias}.{quote(k)}" for k in shape.key]
    texts = [key_text(f"{alias}.{quote(k)}", types[k]) for k in shape.key]
    return ", ".join(typed + texts)


def staged_vs_target_sql(shape: DiffShape, types: Types, json_normalize: bool) -> str:
    """The staged keys missing on the target or different there: kind, one flag per compared column,
    the keys typed, the keys as text."""
    target = qualified(shape.spec.schema, shape.spec.table)
    on = key_match(shape.key)
    cur = current(shape)
    if cur is not None:
        on += f" AND {cur}"
    same = [_same(shape, types, c, json_normalize) for c in shape.compared]
    flags = ", ".join(f"NOT ({x})" for x in same)
    k0 = f"t.{quote(shape.key[0])}"
    differs = " OR ".join(f"NOT ({x})" for x in same) or "FALSE"
    return (f"SELECT IF({k0} IS NULL, 'missing', 'different'){', ' + flags if flags else ''},"
            f" {_keys_out(shape, types, 's')}"
            f" FROM {quote(STAGE)} AS s LEFT JOIN {target} AS t ON {on}"
            f" WHERE {k0} IS NULL OR {differs}")


def target_extra_sql(shape: DiffShape, types: Types, sel: Selection) -> str:
    """The target's (current) keys of the selection that no staged row has: 'extra'."""
    target = qualified(shape.spec.schema, shape.spec.table)
    k0 = f"s.{quote(shape.key[0])}"
    zeros = ", ".join("0" for _ in shape.compared)
    return (f"SELECT 'extra'{', ' + zeros if zeros else ''}, {_keys_out(shape, types, 't')}"
            f" FROM {target} AS t LEFT JOIN {quote(STAGE)} AS s ON {key_match(shape.key)}"
            + _where(current(shape), _selected(shape, types, sel, "t"), f"{k0} IS NULL"))


def count_sql(shape: DiffShape) -> tuple[str, str]:
    """(staged rows, target's current rows)."""
    target = qualified(shape.spec.schema, shape.spec.table)
    return (f"SELECT COUNT(*) FROM {quote(STAGE)}", f"SELECT COUNT(*) FROM {target} AS t{_where(current(shape))}")


# -- repair: the keys a chunk fixes are in KEYS, their source rows in STAGE -------------------


def upsert_fix_sql(shape: DiffShape) -> list[str]:
    """Delete the keys' target rows, insert their staged (source) rows."""
    target = qualified(shape.spec.schema, shape.spec.table)
    cols = shape.spec.data_columns
    return [
        f"DELETE t FROM {target} AS t JOIN {quote(KEYS)} AS k ON {key_match(shape.key, 't', 'k')}",
        f"INSERT INTO {target} ({column_list(cols)}) SELECT {column_list(cols, 's')} FROM {quote(STAGE)} AS s"
        f" JOIN {quote(KEYS)} AS k ON {key_match(shape.key, 'k', 's')}",
    ]


def scd2_fix_sql(shape: DiffShape) -> list[str]:
    """Close the keys' current versions and open the staged rows as new ones, both at the repair time
    (one %s each): history is appended, never rewritten."""
    spec = shape.spec
    target = qualified(spec.schema, spec.table)
    cols = spec.data_columns
    cur, end, start = quote(spec.current_col), quote(spec.end_col), quote(spec.start_col)
    return [
        f"UPDATE {target} AS t JOIN {quote(KEYS)} AS k ON {key_match(shape.key, 't', 'k')}"
        f" SET t.{end} = %s, t.{cur} = 0 WHERE t.{cur} = 1",
        f"INSERT INTO {target} ({column_list(cols)}, {start}, {end}, {cur})"
        f" SELECT {column_list(cols, 's')}, %s, NULL, 1 FROM {quote(STAGE)} AS s"
        f" JOIN {quote(KEYS)} AS k ON {key_match(shape.key, 'k', 's')}",
    ]

