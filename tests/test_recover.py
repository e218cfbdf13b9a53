"""`drivecast bag recover` of damaged drivecast MCAP files: every intact chunk after a damaged one is kept,
and what was dropped is reported with its time range, topics and count; a file too short for its magic is a
"truncated recording". The drives and the recorder come from tests/test_recording_faults.py."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from mcap.reader import make_reader
from mcap.records import Message
from mcap.stream_reader import StreamReader, breakup_chunk

from pipeline.cli.bag import main as bag_main
from pipeline.recordings.base import RecordingError
from pipeline.recordings.mcap_format import MAGIC
from pipeline.recordings.reader import open_recording
from tests.test_recording_faults import TOPIC, make_drive


def _chunks(data: bytes) -> list[tuple[int, int, list[int]]]:
    """(offset, length, log times of TOPIC's messages) per chunk of an intact drive, in file order."""
    summary = make_reader(io.BytesIO(data)).get_summary()
    assert summary is not None
    cid = next(c.id for c in summary.channels.values() if c.topic == TOPIC)
    out = []
    for ci in sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset):
        rec = next(iter(StreamReader(io.BytesIO(data[ci.chunk_start_offset:]), skip_magic=True,
                                     emit_chunks=True).records))
        times = [r.log_time for r in breakup_chunk(rec) if isinstance(r, Message) and r.channel_id == cid]
        out.append((ci.chunk_start_offset, ci.chunk_length, sorted(times)))
    return out


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    data = make_drive(tmp_path_factory.mktemp("drive") / "d.mcap", 104).read_bytes()
    assert len(_chunks(data)) >= 10
    return data


def _damage_chunk(data: bytes, index: int, where: str) -> bytes:
    """Chunk `index` with its compressed data (`data`) or its record length (`length`) overwritten."""
    offset, length, _ = _chunks(data)[index]
    b = bytearray(data)
    if where == "data":
        mid = offset + length // 2
        b[mid:mid + 64] = bytes(64)
    else:
        b[offset + 1:offset + 9] = (2**40).to_bytes(8, "little")
    return bytes(b)


def _recover(bad: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[int], str]:
    fixed = bad.with_name("fixed.mcap")
    assert bag_main(["recover", str(bad), "-o", str(fixed)]) == 0
    out = capsys.readouterr().out
    with open_recording(fixed) as rec:
        assert not rec.info().truncated
        return [it.log_ns for it in rec.items()], out


@pytest.mark.parametrize("where", ["data", "length"])
def test_recover_keeps_every_chunk_after_a_damaged_one_and_reports_what_it_dropped(
        where: str, drive: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chunks = _chunks(drive)
    lost = chunks[3][2]
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(_damage_chunk(drive, 3, where))
    kept, out = _recover(bad, capsys)
    assert kept == sorted(t for i, (_, _, ts) in enumerate(chunks) if i != 3 for t in ts)
    assert f"dropped {len(lost)} messages logged from " in out, out
    assert f"({lost[0]} ns) to " in out and f"({lost[-1]} ns) on {TOPIC}: damaged " in out, out


@pytest.mark.parametrize("where", ["data", "length"])
def test_recover_without_a_summary_keeps_every_intact_chunk_after_a_damaged_one(
        where: str, drive: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A kill -9 mid-file: the last chunk is cut and there is no summary to describe chunk 4."""
    chunks = _chunks(drive)
    last_offset, last_length, _ = chunks[-1]
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(_damage_chunk(drive, 3, where)[:last_offset + last_length // 2])
    kept, out = _recover(bad, capsys)
    assert kept == sorted(t for i, (_, _, ts) in enumerate(chunks[:-1]) if i != 3 for t in ts)
    lost = chunks[3][2]
    # the chunk's header and the message indexes after it survive: all is known, even when its length is
    # gone and recover scans for the next chunk record that checks out
    assert f"dropped {len(lost)} messages logged from " in out, out
    assert f"({lost[0]} ns) to " in out and f"({lost[-1]} ns) on {TOPIC}: damaged " in out, out
    assert f" at byte {chunks[3][0]} (" in out, out
    # the cut last chunk: its header gives the time range, but no index is left to count it
    assert "dropped an unknown number of messages logged from " in out, out
    assert f"damaged record at byte {last_offset} (RecordingError: opcode 0x6, length {last_length - 9}, " \
           f"{last_length // 2 - 9} bytes left); no intact chunk after it" in out, out


@pytest.mark.parametrize("head", [MAGIC[:5], MAGIC[:1], b"#ROSBAG V"])
def test_a_file_holding_only_the_start_of_a_magic_is_a_truncated_recording(head: bytes, tmp_path: Path) -> None:
    path = tmp_path / "x.mcap"
    path.write_bytes(head)
    magic = "MCAP magic alone is 8" if head.startswith(MAGIC[:1]) else "ROS 1 bag magic alone is 13"
    with pytest.raises(RecordingError, match=rf"x.mcap: truncated recording: {len(head)} bytes, the {magic}$"):
        open_recording(path)
