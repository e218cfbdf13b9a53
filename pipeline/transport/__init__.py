"""Moving encoded frames between processes: a topic's `Publisher` (`publisher`) and each
`Subscriber` (`subscriber`), where their sockets live (`endpoints`);
shared memory for large frames, hidden behind the two (`shm`); CURVE keys and authentication (`curve`).

May import `pipeline.wire` and `pipeline.errors`; knows nothing of nodes or launch files.
"""
