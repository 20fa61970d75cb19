"""Stage 3, results: the row and where it is kept.

The declared row schema, the unit key, the one place a row (ok or error) is laid out (:mod:`.rows`); the
results store, one parquet file per row, written atomically and read defensively (:mod:`.store`). Imports only
the model (for the key columns a process gives a unit) and the package's base.
"""
