"""The checker: after the faults stop and the runner caught up, compare the target with the ledger.

Upsert targets: the source equals the ledger's model (sanity of the harness), and the target
equals the source's rows that pass the filter: row count and an md5 over the rows' text in key
order, computed by SQL on both sides; on a mismatch, a row diff names what is lost, stale or
unexpected.

SCD2 targets: per key, the chain of versions equals the one built from the ledger: a committed
transaction that leaves the key visible (exists and passes the filter) opens a version at its
commit time and closes the current one at the same time; one that leaves it invisible only
closes. Rows loaded by the full load open a version whose start is the load time (unknown to the
ledger): such a first version must hold the key's state as of the snapshot. The snapshot's cut
in the ledger is the first ledger commit seen in the target's stream versions, clamped to the
window in which the full load ran. Exactly one current version per live key, none per deleted
key, no two versions from one source commit (same start), no overlap (end = next start).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import sql

from tests.faults.harness import q
from tests.faults.report import RESULTS
from tests.faults.workload import COLS, Ledger, Row, WTable

SCD = ("scd_start_date", "scd_end_date", "scd_current")


@dataclass
class CheckResult:
    table: str
    mode: str
    rows: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.details)

    def __str__(self) -> str:
        head = (
            f"{self.mode} {self.table}: rows={self.rows} lost={self.lost}"
            f" duplicated={self.duplicated} unexpected={self.unexpected}"
        )
        return head + "".join(f"\n  {d}" for d in self.details[:25])


def _cols(names: tuple[str, ...] = COLS) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def _where(t: WTable) -> sql.Composable:
    return sql.SQL("WHERE grp < 8") if t.filtered else sql.SQL("")


def table_digest(
    uri: str, ident: sql.Identifier, where: sql.Composable = sql.SQL("")
) -> tuple[int, str]:
    query = sql.SQL(
        "SELECT count(*), md5(coalesce(string_agg(ROW({c})::text, '|' ORDER BY id), '')) FROM {t} {w}"
    ).format(c=_cols(), t=ident, w=where)
    row = q(uri, query.as_string(None))[0]
    return int(row[0]), str(row[1])


def _rows(
    uri: str,
    ident: sql.Identifier,
    extra: tuple[str, ...] = (),
    where: sql.Composable = sql.SQL(""),
    order: str = "id",
) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {c} FROM {t} {w} ORDER BY {o}").format(
        c=_cols(COLS + extra), t=ident, w=where, o=sql.SQL(order)
    )
    return q(uri, query.as_string(None))


def check_source(src: str, ledger: Ledger, t: WTable) -> None:
    """The harness's own sanity: its model of the source is the source."""
    actual = {r[0]: tuple(r) for r in _rows(src, t.ident)}
    model = ledger.state[t.name]
    if actual != model:
        missing = [k for k in model if k not in actual][:5]
        extra = [k for k in actual if k not in model][:5]
        differ = [k for k in model if k in actual and actual[k] != model[k]][:5]
        raise AssertionError(
            f"ledger model differs from the source {t.name}: missing {missing},"
            f" extra {extra}, differ {differ}"
        )


def check_upsert(
    src: str, tgt: str, ledger: Ledger, t: WTable, target: sql.Identifier | None = None
) -> CheckResult:
    check_source(src, ledger, t)
    ident = target or t.ident
    res = CheckResult(t.name, "upsert")
    want = {k: r for k, r in ledger.state[t.name].items() if t.visible(r)}
    s_digest = table_digest(src, t.ident, _where(t))
    t_digest = table_digest(tgt, ident)
    res.rows = t_digest[0]
    if s_digest == t_digest and len(want) == s_digest[0]:
        return res
    got_rows = _rows(tgt, ident)
    got: dict[int, Row] = {}
    for r in got_rows:
        if r[0] in got:
            res.duplicated += 1
            res.details.append(f"duplicate key {r[0]}")
        got[r[0]] = tuple(r)
    for k, r in want.items():
        if k not in got:
            res.lost += 1
            res.details.append(f"lost {k}: {r}")
        elif got[k] != r:
            res.lost += 1
            res.details.append(f"stale {k}: target {got[k]} != source {r}")
    for k, r in got.items():
        if k not in want:
            res.unexpected += 1
            res.details.append(f"unexpected {k}: {r}")
    res.details.insert(0, f"digest source {s_digest} != target {t_digest}")
    return res


def fill_commit_ts(src: str, ledger: Ledger) -> None:
    """Exact commit times (track_commit_timestamp=on): the same value pgoutput's Commit carries."""
    todo = [t for t in ledger.txns if t.ts is None]
    for i in range(0, len(todo), 2000):
        chunk = todo[i : i + 2000]
        rows = q(
            src,
            "SELECT x, pg_xact_commit_timestamp(x::xid) FROM unnest(%s::text[]) x",
            ([t.xid for t in chunk],),
        )
        ts = dict(rows)
        for t in chunk:
            t.ts = ts[t.xid]
            assert t.ts is not None, f"no commit timestamp for xid {t.xid}"


@dataclass
class Version:
    values: Row
    start: datetime | None  # None: opened by the full load (load time)
    end: datetime | None = None

    @property
    def current(self) -> bool:
        return self.end is None


def expected_chains(ledger: Ledger, t: WTable, cut: int) -> dict[int, list[Version]]:
    snap: dict[int, Row] = dict(ledger.initial.get(t.name, {}))
    for txn in ledger.txns[:cut]:
        for (name, k), (_b, after) in txn.effects.items():
            if name == t.name:
                if after is None:
                    snap.pop(k, None)
                else:
                    snap[k] = after
    chains: dict[int, list[Version]] = {
        k: [Version(r, None)] for k, r in snap.items() if t.visible(r)
    }
    for txn in ledger.txns[cut:]:
        for (name, k), (_b, after) in txn.effects.items():
            if name != t.name:
                continue
            chain = chains.setdefault(k, [])
            if chain and chain[-1].current:
                if not t.visible(after):
                    chain[-1].end = txn.ts
                    continue
                chain[-1].end = txn.ts
            if t.visible(after):
                assert after is not None
                chain.append(Version(after, txn.ts))
    return {k: v for k, v in chains.items() if v}


def check_scd2(
    src: str,
    tgt: str,
    ledger: Ledger,
    t: WTable,
    load_window: tuple[int, int] = (0, 0),
    target: sql.Identifier | None = None,
) -> CheckResult:
    """`load_window`: ledger marks before the full load started and after it finished."""
    check_source(src, ledger, t)
    fill_commit_ts(src, ledger)
    ident = target or t.ident
    res = CheckResult(t.name, "scd2")
    rows = _rows(tgt, ident, SCD, order="id, scd_start_date, scd_end_date NULLS LAST")
    res.rows = len(rows)
    got: dict[int, list[tuple[Row, datetime, datetime | None, bool]]] = {}
    for r in rows:
        got.setdefault(r[0], []).append((tuple(r[: len(COLS)]), r[-3], r[-2], bool(r[-1])))
    ts_index: dict[datetime, int] = {}
    for txn in ledger.txns:
        assert txn.ts is not None
        ts_index.setdefault(txn.ts, txn.idx)
    stamps = [ts_index[v[1]] for vs in got.values() for v in vs if v[1] in ts_index]
    stamps += [ts_index[v[2]] for vs in got.values() for v in vs if v[2] in ts_index]
    lo, hi = load_window
    cut = min(stamps) if stamps else hi
    cut = max(lo, min(hi, cut))
    want = expected_chains(ledger, t, cut)
    live = {k for k, r in ledger.state[t.name].items() if t.visible(r)}
    for k in sorted(set(want) | set(got)):
        exp = want.get(k, [])
        act = got.get(k, [])
        currents = sum(1 for v in act if v[3])
        if (k in live and currents != 1) or (k not in live and currents != 0):
            res.details.append(f"key {k}: {currents} current versions (live={k in live})")
        starts = Counter(v[1] for v in act)
        dup = sum(n - 1 for n in starts.values() if n > 1)
        if dup:
            res.duplicated += dup
            res.details.append(f"key {k}: {dup} extra version(s) from one source commit")
        # match versions by (values, start); a full-load version matches any start not a ledger commit
        pool = Counter((v[0], v[1]) for v in act)
        loose = Counter(v[0] for v in act if v[1] not in ts_index)
        for v in exp:
            if v.start is None:
                if loose[v.values] > 0:
                    loose[v.values] -= 1
                    tv = next(a for a in act if a[0] == v.values and a[1] not in ts_index)
                    pool[(tv[0], tv[1])] -= 1
                    continue
            elif pool[(v.values, v.start)] > 0:
                pool[(v.values, v.start)] -= 1
                continue
            res.lost += 1
            res.details.append(f"key {k}: lost version {v.values} from {v.start}")
        extra = sum(max(0, n) for n in pool.values()) - dup
        if extra > 0:
            res.unexpected += extra
            res.details.append(
                f"key {k}: {extra} unexpected version(s): {[a[:3] for a in act][:4]}"
            )
        if not res.details and len(exp) == len(act):
            for v, a in zip(exp, act, strict=True):
                if (
                    v.values != a[0]
                    or (v.start is not None and v.start != a[1])
                    or v.end != a[2]
                    or v.current != a[3]
                ):
                    res.details.append(
                        f"key {k}: chain differs: expected {[(x.values[1:3], x.start, x.end) for x in exp]}"
                        f" got {[(x[0][1:3], x[1], x[2]) for x in act]}"
                    )
                    break
        # no overlap: each version ends where the next starts
        for a, b in zip(act, act[1:], strict=False):
            if a[2] is None or a[2] > b[1]:
                res.details.append(f"key {k}: versions overlap ({a[1]}..{a[2]} then {b[1]})")
                break
    return res


def check(
    src: str,
    tgt: str,
    ledger: Ledger,
    tables: list[WTable],
    mode: str,
    load_window: tuple[int, int] = (0, 0),
) -> list[CheckResult]:
    """Check every table, record the figures in the report, assert nothing lost/duplicated/unexpected."""
    results = []
    for t in tables:
        if mode == "upsert":
            results.append(check_upsert(src, tgt, ledger, t))
        else:
            results.append(check_scd2(src, tgt, ledger, t, load_window))
    for r in results:
        RESULTS.outcome(r.lost, r.duplicated, r.unexpected)
    ledger.report()
    bad = [r for r in results if not r.ok]
    assert not bad, "target differs from the ledger:\n" + "\n".join(map(str, bad))
    return results
