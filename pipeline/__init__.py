"""drivecast's runtime: everything a running graph needs, and nothing that needs torch.

Subpackages, lowest first; each may import only those below it (and `pipeline.errors`), never
`nodes`, `models` or `export` (tests/test_architecture.py enforces this with import-linter):

- `wire`: the messages and their codec (what travels between nodes, and how it is checked).
- `transport`: ZeroMQ publishers and subscribers, shared memory for large frames, CURVE.
- `runtime`: the Node API, launch files, the launcher and the per-node runner, the run directory.
- `recordings`: reading recordings (MCAP, ROS bags), writing MCAP, replay.
- `cli`: the `drivecast` command and the tools that look into a running graph.
"""
