"""Regenerate stream_capture.json from a real cluster (run by hand, not by pytest).

    python tests/unit/data/make_stream_capture.py

Starts a throwaway cluster, runs a fixed script of changes and records, as hex,
every CopyData frame a walsender sends after `START_REPLICATION ... LOGICAL`
(pgoutput proto_version 1): XLogData frames carrying pgoutput messages, and
the keepalive that answers a status update asking for a reply. The script
covers what the framing must handle beyond pgoutput_capture.json: a table's
shape changing mid-stream (ALTER TABLE ADD COLUMN), a key change, two tables,
and a heartbeat between transactions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import pq

from trempy_nb.capture import walproto
from trempy_nb.capture.pgoutput import Commit, decode
from trempy_nb.embedded import start_cluster

OUT = Path(__file__).with_name("stream_capture.json")
TRANSACTIONS = 5  # transactions with published changes in the script below


def _workload(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE public.s (id int PRIMARY KEY, v text)")
    conn.execute("CREATE TABLE public.u (k int PRIMARY KEY, n int)")
    conn.execute("CREATE PUBLICATION pub FOR TABLE public.s, public.u")
    conn.execute("SELECT pg_create_logical_replication_slot('cap', 'pgoutput')")
    with conn.transaction():
        conn.execute("INSERT INTO s VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    with conn.transaction():
        conn.execute("UPDATE s SET v = 'B' WHERE id = 2")
        conn.execute("INSERT INTO u VALUES (1, 10)")
    conn.execute("SELECT pg_logical_emit_message(false, 'trempy_heartbeat', '')")
    conn.execute("ALTER TABLE s ADD COLUMN w int")  # the next change of s brings a new Relation
    conn.execute("INSERT INTO s VALUES (4, 'd', 40)")
    conn.execute("UPDATE s SET id = 5 WHERE id = 4")  # key change
    conn.execute("DELETE FROM u")


def _frames(uri: str) -> list[bytes]:
    """The frames of the slot's stream up to the last commit, then one requested keepalive."""
    frames: list[bytes] = []
    conn = psycopg.connect(uri, autocommit=True, replication="database")
    try:
        pg = conn.pgconn
        pg.send_query(
            b"START_REPLICATION SLOT cap LOGICAL 0/0"
            b" (proto_version '1', publication_names '\"pub\"', messages 'true')"
        )
        res = pg.get_result()
        assert res is not None and res.status == pq.ExecStatus.COPY_BOTH, pg.error_message
        commits = 0
        last_end = 0
        while commits < TRANSACTIONS:
            n, data = pg.get_copy_data(0)  # blocking
            assert n > 0, pg.error_message
            frames.append(bytes(data))
            msg = walproto.xlog_payload(data)
            if msg is not None and msg[:1] == b"C":
                commits += 1
                commit = decode(bytes(msg))
                assert isinstance(commit, Commit)
                last_end = commit.end_lsn
        pg.put_copy_data(walproto.standby_status(last_end, datetime.now(timezone.utc), reply=True))
        pg.flush()
        while True:
            n, data = pg.get_copy_data(0)
            assert n > 0, pg.error_message
            frames.append(bytes(data))
            if walproto.keepalive(data) is not None:
                break
        pg.put_copy_end()
        pg.flush()
    finally:
        conn.close()  # (not `with`: its exit would send a COMMIT into the COPY)
    return frames


def main() -> None:
    cluster = start_cluster()
    try:
        uri = cluster.create_database("stream")
        with psycopg.connect(uri, autocommit=True, options="-c TimeZone=UTC") as conn:
            _workload(conn)
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        frames = _frames(uri)
        doc = {
            "about": "CopyData frames of a START_REPLICATION session, by make_stream_capture.py",
            "server_version": version,
            "frames": [f.hex() for f in frames],
        }
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {len(frames)} frames to {OUT}")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
