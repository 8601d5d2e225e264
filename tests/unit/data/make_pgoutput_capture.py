"""Regenerate pgoutput_capture.json from a real cluster (run by hand, not by pytest).

    python tests/unit/data/make_pgoutput_capture.py

Starts a throwaway cluster, runs a fixed script of changes that covers every
message kind the decoder handles, and stores the raw `data` bytes of
pg_logical_slot_peek_binary_changes (proto_version 1) as hex.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import psycopg

from trempy_nb.embedded import start_cluster

OUT = Path(__file__).with_name("pgoutput_capture.json")


def main() -> None:
    rnd = random.Random(20240611)
    big = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(5000))
    unicode_name = "Zoë ✓ 日本語 🐘"
    cluster = start_cluster()
    try:
        uri = cluster.create_database("capture")
        with psycopg.connect(
            uri, autocommit=True, options="-c TimeZone=UTC -c synchronous_commit=on"
        ) as conn:
            conn.execute("CREATE TYPE mood AS ENUM ('ok', 'sad')")
            conn.execute(
                "CREATE TABLE public.t (id int PRIMARY KEY, name text, note text, big text,"
                " amount numeric(12,2), m mood, at timestamptz)"
            )
            conn.execute("CREATE TABLE public.tf (id int, v text)")
            conn.execute("ALTER TABLE public.tf REPLICA IDENTITY FULL")
            conn.execute("CREATE PUBLICATION pub FOR TABLE public.t, public.tf")
            conn.execute("SELECT pg_create_logical_replication_slot('cap', 'pgoutput')")
            with conn.transaction():
                conn.execute(
                    "INSERT INTO t VALUES (1, %s, NULL, %s, 12.50, 'ok', '2024-01-02 03:04:05.123456+00')",
                    (unicode_name, big),
                )
                conn.execute("INSERT INTO t VALUES (2, 'plain', 'x', NULL, NULL, NULL, NULL)")
            conn.execute("UPDATE t SET name = 'renamed' WHERE id = 1")  # big: unchanged TOAST
            conn.execute("UPDATE t SET id = 10 WHERE id = 2")  # key change: old key 'K'
            conn.execute("DELETE FROM t WHERE id = 10")
            with conn.transaction():
                conn.execute("INSERT INTO tf VALUES (1, 'a'), (2, NULL)")
                conn.execute("UPDATE tf SET v = 'b' WHERE id = 1")  # old row 'O'
                conn.execute("DELETE FROM tf WHERE id = 2")
            with conn.transaction():
                conn.execute("SELECT pg_logical_emit_message(true, 'app', 'hello')")
                conn.execute("INSERT INTO tf VALUES (3, 'c')")
            conn.execute("SELECT pg_logical_emit_message(false, 'trempy_heartbeat', '')")
            conn.execute("TRUNCATE t, tf RESTART IDENTITY")
            conn.execute("SELECT pg_replication_origin_create('upstream')")
            conn.execute("SELECT pg_replication_origin_session_setup('upstream')")
            with conn.transaction():
                conn.execute(
                    "SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-01 00:00:00+00')"
                )
                conn.execute("INSERT INTO tf VALUES (4, 'from upstream')")
            conn.execute("SELECT pg_replication_origin_session_reset()")
            rows = conn.execute(
                "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes("
                "'cap', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')"
            ).fetchall()
            version = conn.execute("SHOW server_version").fetchone()[0]
            conn.execute("SELECT pg_drop_replication_slot('cap')")
        doc = {
            "about": "raw pgoutput v1 messages captured by make_pgoutput_capture.py",
            "server_version": version,
            "big": big,
            "unicode_name": unicode_name,
            "messages": [
                {"lsn": lsn, "xid": xid, "hex": bytes(data).hex()} for lsn, xid, data in rows
            ],
        }
        OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} messages to {OUT}")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
