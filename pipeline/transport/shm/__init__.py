"""Shared memory for large frames between processes of one machine.

A publisher copies a message's arrays once into a slot of a ring in a shared-memory segment and
sends over ZeroMQ only the header and a small descriptor; a subscriber maps the segment and hands
the node read-only views of the slot. Slot locks keep a slot that a node holds from being
rewritten and a torn frame from being delivered; the writer never waits for a reader.

`segment`: layout, names and locks; `writer`: the publisher's side; `reader`: the subscriber's
side; `bell`: the pipes that wake a subscriber before ZeroMQ does. The transport's
`Publisher` and `Subscriber` hide all of this from the runtime (the launcher only removes a run's
segments at its end).
"""

from pipeline.transport.shm.bell import Bell, bell_path
from pipeline.transport.shm.reader import ShmReader
from pipeline.transport.shm.segment import BODY, DESCRIPTOR_MAGIC, remove_segments, run_prefix, segment_dir
from pipeline.transport.shm.writer import ShmWriter

__all__ = ["BODY", "DESCRIPTOR_MAGIC", "Bell", "ShmReader", "ShmWriter", "bell_path", "remove_segments",
           "run_prefix", "segment_dir"]
