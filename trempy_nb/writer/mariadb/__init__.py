"""The MariaDB/MySQL target dialect: the same exactly-once upsert and SCD2 as the PostgreSQL writer.

It lives under `writer/` because it is the writer's second dialect: it takes the
writer's inputs (`TargetSpec`, `TableApply`, change frames holding PostgreSQL
text) and reuses its pure parts (`collapse.py`, `errorpolicy.py`); only the I/O
and the SQL differ. Modules: `uri` (mysql:// / mariadb:// URIs, connecting),
`names` (backtick quoting), `types` (PostgreSQL output types -> MariaDB types and
values), `ddl` (target and state tables, key length), `errors` (the error policy's
classification of server errors), `bulk` (LOAD DATA LOCAL INFILE from memory),
`capabilities` (what the server must offer before anything is written), `apply`
(a CDC batch) and `fullload` (a full-load table writer).

The driver is PyMySQL (the optional extra `trempy_nb[mariadb]`).
"""
