"""Recordings: one reader interface (`reader`) over one module per format (drivecast MCAP, ROS bags),
the MCAP writer (`writer`), the Foxglove channels it adds (`foxglove`), and replay (`replay`).

May import `pipeline.runtime`, `pipeline.transport`, `pipeline.wire` and `pipeline.errors`.
"""
