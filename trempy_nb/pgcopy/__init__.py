"""PostgreSQL COPY wire formats and the libpq COPY transfers: no plans, tasks or settings here.

- `textcodec`: COPY text lines <-> String frames of PostgreSQL text values.
- `messages`: wire messages in one buffer (numpy-free base of `rowbuffer` and capture's
  `MessageWindow`).
- `rowbuffer`: many wire messages in one buffer, values sliced out as Polars columns
  (also framing change capture's pgoutput rows).
- `binarycodec`: COPY binary rows -> frames (`read_copy_binary`, uncut `Tail`), and
  text values -> binary fields by target type (`encoder_for`, `encode`).
- `binarytext`: binary values -> the text PostgreSQL prints for them.
- `copyio`: COPY TO/FROM through libpq (`iter_frames`, `iter_binary_frames`,
  `copy_frame`, `copy_binary`) and the source-to-target pump (`stream_copy`).

Only the standard library, numpy/Polars/Arrow/psycopg and `trempy_nb.pgtypes` are
imported here: the pipeline and the full load build on this, never the reverse.
"""
