"""The run's target dialect is chosen from the target URI alone; PostgreSQL's is the writer itself."""

from __future__ import annotations

from trempy_nb.engine.runner import target_dialect
from trempy_nb.writer import state
from trempy_nb.writer.apply import apply_batch
from trempy_nb.writer.dialect import POSTGRES
from trempy_nb.writer.mariadb import apply as maria_apply
from trempy_nb.writer.mariadb import state as maria_state


def test_postgres_uris_get_the_postgres_writer() -> None:
    for uri in ("postgresql://u@h/db", "postgres://u@h:5433/db", "host=h dbname=db"):
        assert target_dialect(uri) is POSTGRES
    assert POSTGRES.apply_batch is apply_batch and POSTGRES.record_slot_lsn is state.record_slot_lsn


def test_mysql_and_mariadb_uris_get_the_mariadb_writer() -> None:
    for uri in ("mysql://root@127.0.0.1:3306/dw", "MariaDB://app:pw@db/dw"):
        d = target_dialect(uri)
        assert d.name == "mariadb"
        assert d.apply_batch is maria_apply.apply_batch and d.read_shapes is maria_state.read_shapes
