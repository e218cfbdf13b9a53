"""Fleet evaluation: one lockstep replay per drive, on a local process pool or Ray (`drivecast fleet eval`).

`drive` runs one drive (the worker function), `backends` runs many (sequential, process pool, Ray),
`report` writes the journal and the tables. The command is `pipeline.cli.fleet`.
"""
