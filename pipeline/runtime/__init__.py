"""Running nodes: the Node API (`node`), launch files (`graph`), the launcher (`launch`), the
per-process runner (`runner`), the in-process deterministic graph (`local`), the run directory and
its manifest (`rundir`), signals, timers and per-node statistics.

May import `pipeline.transport`, `pipeline.wire` and `pipeline.errors`.
"""
