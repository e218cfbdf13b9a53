"""Moving encoded frames between processes: ZeroMQ publishers and subscribers (`pubsub`), shared
memory for large frames (`shm`), CURVE keys and authentication (`curve`).

May import `pipeline.wire` and `pipeline.errors`; knows nothing of nodes or launch files.
"""
