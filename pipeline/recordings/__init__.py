"""Recordings: read them, write them, replay them.

- Reading: `reader.open_recording` is the one interface; it picks a format module, `mcap_reader`
  (drivecast MCAP) or `rosbag_reader` (ROS bags), each implementing `base.Recording`.
- Writing: `writer.Recorder` and `drivecast record`. The on-disk format both sides share is
  `mcap_format`; `foxglove` gives the Foxglove channels (stored images and clouds, mirrors).
- Replay: `schedule` (what plays when), `replay` (paced, `drivecast play`), `lockstep` (in-process).

May import `pipeline.runtime`, `pipeline.transport`, `pipeline.wire` and `pipeline.errors`. Inside,
`base` and `foxglove` import nothing of the package, the format modules only those and `mcap_format`,
so the dispatcher in `reader` imports the formats without a circle.
"""
