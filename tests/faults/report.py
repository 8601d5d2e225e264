"""The fault suite's figures: collected while the tests run, printed at the end, written to REPORT.md.

Every test records what it injected and what the checker found into the process-wide `RESULTS`;
`tests/faults/conftest.py` saves them to `_results.json` and renders `REPORT.md` at the end of the
session. `python -m tests.faults.report` runs the suite (pytest -m faults tests/faults) and writes
the report; `--from-results` only renders the last saved results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS_JSON = HERE.parent / "_artifacts" / "fault_results.json"
REPORT_MD = HERE / "REPORT.md"

CASES = {
    1: "kill -9 of the runner during CDC, repeated",
    2: "kill -9 during the full load (early, middle, late)",
    3: "crash points in the apply/confirm sequence",
    4: "pg_terminate_backend of the slot reader, repeated",
    5: "source restart (fast/immediate) in snapshot and streaming; target crash mid-apply",
    6: "slot dropped / dropped-and-recreated while stopped",
    7: "slot invalidated by max_slot_wal_keep_size",
    8: "idle captured database next to a busy one (heartbeat)",
    9: "interleaved transactions across a restart; 100k-row INSERT and COPY killed mid-apply",
    10: "large and aborted transactions, savepoints; runner RSS",
    11: "table added to the task while writes are in flight",
    12: "unchanged TOAST (both modes), 50 MB values, broker size limit",
    13: "1,600-column table",
    14: "RabbitMQ broker restart, close_all_connections, stalled consumer, poison/malformed",
    15: "two runners for one task",
    16: "identifier fuzzing",
    17: "settings fuzzing (hypothesis)",
    18: "least privilege; SELECT revoked mid-run",
    19: "secrets never leak",
    20: "kill -9 of the runner during CDC into a MariaDB target, repeated",
    21: "fleet: worker killed, frozen past its lease, cut off (netns); SIGTERM drain; zombie writes fenced",
}


@dataclass
class Results:
    faults: Counter = field(default_factory=Counter)  # kind -> count
    ops_committed: int = 0
    ops_indeterminate: int = 0
    ops_indeterminate_resolved_committed: int = 0
    txns_committed: int = 0
    txns_aborted_on_purpose: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    recovery_s: list[float] = field(default_factory=list)
    peak_retained_wal: int = 0
    peak_retained_wal_idle_db: int = 0
    invariant_samples: int = 0
    invariant_violations: int = 0
    dead_letters: int = 0
    poison_injected: int = 0
    secret_hits: int = 0
    secret_places_searched: int = 0
    secrets_searched: int = 0
    peak_runner_rss: int = 0
    classified_errors: list[str] = field(default_factory=list)
    takeovers: int = 0  # fleet: task roles that moved to another worker after a fault
    takeover_s: list[float] = field(default_factory=list)  # fault -> streaming again elsewhere
    zombie_refused: int = 0  # late writes of a worker that lost its lease, rolled back by the fence
    cases: dict[str, str] = field(default_factory=dict)  # nodeid -> outcome
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    # recording --------------------------------------------------------------------------
    def fault(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.faults[kind] += n

    def recovery(self, seconds: float) -> None:
        with self._lock:
            self.recovery_s.append(round(seconds, 3))

    def retained(self, nbytes: int, idle_db: bool = False) -> None:
        with self._lock:
            if idle_db:
                self.peak_retained_wal_idle_db = max(self.peak_retained_wal_idle_db, int(nbytes))
            self.peak_retained_wal = max(self.peak_retained_wal, int(nbytes))

    def rss(self, nbytes: int) -> None:
        with self._lock:
            self.peak_runner_rss = max(self.peak_runner_rss, int(nbytes))

    def outcome(self, lost: int = 0, duplicated: int = 0, unexpected: int = 0) -> None:
        with self._lock:
            self.lost += lost
            self.duplicated += duplicated
            self.unexpected += unexpected

    def ledger(
        self, committed_ops: int, indeterminate_ops: int, resolved_committed: int, txns: int
    ) -> None:
        with self._lock:
            self.ops_committed += committed_ops
            self.ops_indeterminate += indeterminate_ops
            self.ops_indeterminate_resolved_committed += resolved_committed
            self.txns_committed += txns

    def takeover(self, seconds: float) -> None:
        with self._lock:
            self.takeovers += 1
            self.takeover_s.append(round(seconds, 3))

    def refused(self, n: int) -> None:
        with self._lock:
            self.zombie_refused += n

    def classified(self, text: str) -> None:
        with self._lock:
            self.classified_errors.append(text[:200])

    # persistence ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["faults"] = dict(self.faults)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Results:
        r = cls()
        for k, v in d.items():
            if hasattr(r, k):
                setattr(r, k, Counter(v) if k == "faults" else v)
        return r

    def save(self, path: Path = RESULTS_JSON) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, default=str))


RESULTS = Results()


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def _case_of(nodeid: str) -> int | None:
    import re

    m = re.search(r"test_c(\d\d)", nodeid)
    return int(m.group(1)) if m else None


def render(r: Results) -> str:
    rec = sorted(r.recovery_s)
    p50 = statistics.median(rec) if rec else 0.0
    mx = max(rec) if rec else 0.0
    tk = sorted(r.takeover_s)
    tk50 = statistics.median(tk) if tk else 0.0
    tkmax = max(tk) if tk else 0.0
    by_case: dict[int, list[tuple[str, str]]] = {}
    for nodeid, outcome in sorted(r.cases.items()):
        c = _case_of(nodeid)
        if c is not None:
            by_case.setdefault(c, []).append((nodeid.split("::")[-1], outcome))
    lines = [
        "# Fault-injection report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `python -m tests.faults.report`"
        f" (suite wall time {r.wall_s:.0f} s).",
        "",
        "## Outcome",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| operations committed (source row operations in committed transactions) | {r.ops_committed:,} |",
        f"| transactions committed | {r.txns_committed:,} |",
        f"| operations indeterminate (COMMIT raised) | {r.ops_indeterminate:,}"
        f" (resolved committed: {r.ops_indeterminate_resolved_committed:,}) |",
        f"| **lost** | **{r.lost}** |",
        f"| **duplicated** | **{r.duplicated}** |",
        f"| unexpected | {r.unexpected} |",
        f"| recovery time p50 / max ({len(rec)} recoveries) | {p50:.2f} s / {mx:.2f} s |",
        f"| fleet takeovers / takeover time p50 / max (fault -> streaming elsewhere) | {r.takeovers}"
        f" / {tk50:.2f} s / {tkmax:.2f} s |",
        f"| fleet zombie writes refused by the fence | {r.zombie_refused} |",
        f"| peak retained WAL (any slot of the suite) | {_fmt_bytes(r.peak_retained_wal)} |",
        f"| peak retained WAL, idle captured DB next to a busy one | {_fmt_bytes(r.peak_retained_wal_idle_db)} |",
        f"| slot-vs-checkpoint samples / violations | {r.invariant_samples:,} / {r.invariant_violations} |",
        f"| dead letters / poison messages injected | {r.dead_letters} / {r.poison_injected} |",
        f"| **secret-leak hits** ({r.secrets_searched} passwords x {r.secret_places_searched} places) | **{r.secret_hits}** |",
        f"| peak runner RSS | {_fmt_bytes(r.peak_runner_rss)} |",
        "",
        "## Faults injected",
        "",
        "| kind | count |",
        "| --- | --- |",
    ]
    for kind, n in sorted(r.faults.items()):
        if n:
            lines.append(f"| {kind} | {n} |")
    lines.append(f"| **total** | **{sum(n for n in r.faults.values() if n > 0):,}** |")
    lines += ["", "## Cases", "", "| # | case | tests |", "| --- | --- | --- |"]
    for c, title in CASES.items():
        tests = by_case.get(c, [])
        cell = ", ".join(f"{name}: {outcome}" for name, outcome in tests) or "not run"
        lines.append(f"| {c} | {title} | {cell} |")
    if r.classified_errors:
        lines += ["", "## Classified errors seen (expected ones)", ""]
        for e in sorted(set(r.classified_errors))[:40]:
            lines.append(f"- `{e}`")
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    lines += [
        "",
        "## Not tested",
        "",
        "- multi-node RabbitMQ clusters and network partitions between broker nodes;",
        "- failover slots / physical standbys promoted under a running task;",
        "- point-in-time restores of the source or the target;",
        "- disk-full and fsync failures (the throwaway clusters run with fsync=off).",
        "",
    ]
    return "\n".join(lines)


def write_report(r: Results = RESULTS, path: Path = REPORT_MD) -> str:
    text = render(r)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.report")
    p.add_argument("--from-results", action="store_true", help="only render the last saved results")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. --faults-long)")
    args = p.parse_args(argv)
    rc = 0
    if not args.from_results:
        rc = subprocess.call(
            [sys.executable, "-m", "pytest", "-q", "-m", "faults", str(HERE), *args.pytest_args]
        )
    if not RESULTS_JSON.exists():
        print("no results: run the suite first", file=sys.stderr)
        return rc or 1
    text = write_report(Results.from_json(json.loads(RESULTS_JSON.read_text())))
    print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
