"""What a replay sends, in which order: `PlayOptions` and `schedule`, shared by paced replay
(`replay`), lockstep replay (`lockstep`) and the player node.

`schedule` yields a recording's messages in log-time order with topics remapped, `Clock` ticks
inserted (`clock_hz` per second of recording) and, with `loop`, pass k shifted by k x (span + 1 ns)
in log time, so a looping replay keeps one time reference. `--topics` and `--remap` must name recorded
topics (`check_names`): a typo is an error, not a replay that silently plays nothing.
Topics in `tag_source` get `frame_id` = their recorded name: a player node merges several recorded
topics of one schema onto one output, and subscribers tell them apart by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError
from pipeline.recordings.base import Item, Recording, RecordingInfo
from pipeline.wire.codec import decode, encode
from pipeline.wire.messages import Clock

__all__ = ["CLOCK_TOPIC", "PlayOptions", "check_names", "parse_remap", "schedule"]

CLOCK_TOPIC = "clock"


@dataclass
class PlayOptions:
    rate: float = 1.0
    loop: bool = False
    start_offset_s: float = 0.0
    topics: list[str] | None = None
    remap: dict[str, str] = field(default_factory=dict)
    clock_hz: float = 0.0                 # 0: no clock
    clock_topic: str = CLOCK_TOPIC
    max_loops: int = 0                    # with loop: stop after this many passes (0 = forever)
    tag_source: frozenset[str] = frozenset()  # recorded topics whose messages get frame_id = the topic

    def check(self) -> None:
        if not self.rate > 0:
            raise ConfigError(f"--rate: expected a positive number, got {self.rate:g}")
        if self.start_offset_s < 0:
            raise ConfigError(f"--start-offset: expected >= 0 seconds, got {self.start_offset_s:g}")
        if self.clock_hz < 0:
            raise ConfigError(f"--clock: expected a positive rate in Hz, got {self.clock_hz:g}")


def parse_remap(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        a, sep, b = item.partition(":=")
        if not sep or not a or not b:
            raise ConfigError(f"--remap {item!r}: expected FROM:=TO")
        out[a] = b
    return out


def check_names(info: RecordingInfo, opts: PlayOptions) -> None:
    """Raise ConfigError if `--topics` or the source of a `--remap` names no topic of the recording,
    or a remapped topic has no drivecast schema (it cannot be played)."""
    topics = {t.name: t for t in info.topics}
    listing = ", ".join(t.name for t in info.topics)
    unknown = sorted(set(opts.topics or ()) - set(topics))
    if unknown:
        raise ConfigError(f"--topics: {info.path} has no topic {', '.join(unknown)} (topics: {listing})")
    for src, dst in opts.remap.items():
        if src not in topics:
            raise ConfigError(f"--remap {src}:={dst}: {info.path} has no topic {src!r} (topics: {listing})")
        if not topics[src].converted:
            raise ConfigError(f"--remap {src}:={dst}: {src} is a {topics[src].type}, which has no drivecast "
                              "schema; it cannot be played")


def schedule(rec: Recording, opts: PlayOptions) -> Iterator[Item]:
    """The messages to play, in order, with remapped topics, clock ticks and loop shifts applied."""
    info = rec.info()
    check_names(info, opts)
    wanted = {t.name for t in info.topics if t.converted}
    if opts.topics is not None:
        wanted &= set(opts.topics)
    start = info.start_ns + int(opts.start_offset_s * 1e9)
    span = max(0, info.end_ns - start) + 1
    period = int(1e9 / opts.clock_hz) if opts.clock_hz else 0
    k = 0
    while True:
        shift = k * span
        next_tick = start
        for item in rec.items(sorted(wanted), start_ns=start):
            t = item.log_ns + shift
            while period and next_tick + shift <= t:
                yield _clock_item(opts.clock_topic, next_tick + shift)
                next_tick += period
            frames = _tagged(item.frames, item.topic, item.publish_ns) if item.topic in opts.tag_source else item.frames
            yield Item(opts.remap.get(item.topic, item.topic), t, item.publish_ns, frames)
        k += 1
        if not opts.loop or (opts.max_loops and k >= opts.max_loops):
            return


def _tagged(frames: list[Any], topic: str, publish_ns: int) -> list[Any]:
    """The message re-encoded with `frame_id` = its recorded topic (content, stamp and seq kept)."""
    msg, _ = decode(frames)
    msg.frame_id = topic
    return encode(msg, publish_ns=publish_ns)


def _clock_item(topic: str, t_ns: int) -> Item:
    return Item(topic, t_ns, t_ns, encode(Clock(stamp_ns=t_ns), publish_ns=t_ns))
