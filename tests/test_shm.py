"""pipeline/transport/shm/ through the Publisher and Subscriber: large frames over shared memory (issue 8).

Integrity under a full-speed publisher and a slow subscriber, kill -9 of either side, a mixed
local + tcp subscriber set, no fd leak, owner-only segments in the run's namespace, untrusted
descriptors. Every wait has a deadline; child processes are killed in `finally`.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import msgspec
import numpy as np
import pytest
import zmq

from pipeline.runtime.rundir import Manifest
from pipeline.runtime.runner import ProcessRuntime
from pipeline.transport.endpoints import BULK_HWM, free_tcp_port
from pipeline.transport.publisher import Publisher
from pipeline.transport.shm import DESCRIPTOR_MAGIC, ShmReader, bell_path, remove_segments, run_prefix, segment_dir
from pipeline.transport.subscriber import Subscriber
from pipeline.wire.codec import decode, encode, peek_header
from pipeline.wire.messages import Image
from tests.conftest import REPO, Launched, connected, pid_alive, take, wait_for

TOPIC = "cam/image"
BIG = (256, 1024, 1)  # 256 KiB: above the threshold, small enough to go fast


@pytest.fixture(autouse=True)
def _no_segment_left(tmp_path: Path) -> Iterator[None]:
    """Segments are in /dev/shm, outside tmp_path: remove what a test that failed mid-way left there."""
    yield
    remove_segments(tmp_path)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _segments(run_dir: Path) -> list[Path]:
    prefix = run_prefix(run_dir) + "."
    return sorted(p for p in segment_dir(run_dir).iterdir() if p.name.startswith(prefix))


def _image(seq: int, shape: tuple[int, ...] = BIG) -> Image:
    return Image(data=np.full(shape, seq & 0xFF, dtype=np.uint8), seq=seq)


def _is_image(message: list[Any]) -> bool:
    header = message[1]  # a zmq.Frame, or bytes cut from a shared-memory message's one frame
    return peek_header(getattr(header, "buffer", header)).schema == Image.SCHEMA


def _images(messages: list[list[Any]]) -> list[Image]:
    return [decode(m[1:], expect=Image)[0] for m in messages]  # type: ignore[misc]


def _pair(ctx: zmq.Context, closing: list[Any], tmp_path: Path, policy: str = "drop_oldest", *,
          publisher_shm: str = "on", slots: int = 4, bell: bool = False) -> tuple[Publisher, Subscriber]:
    """A publisher of TOPIC and a local shared-memory subscriber, connected (both closed after the
    test); with `bell`, once the publisher has taken the subscriber's bell."""
    endpoint = f"ipc://{tmp_path}/cam.sock"
    pub = Publisher(ctx, TOPIC, endpoint, shm=publisher_shm, shm_slots=slots)
    sub = _subscriber(ctx, TOPIC, endpoint, policy, shm="on", bell=bell)
    closing += [pub, sub]
    connected(pub, sub)
    if bell:
        _belled(pub, sub)
    return pub, sub


def test_a_local_subscriber_gets_read_only_views_of_the_slot_and_zmq_carries_only_a_descriptor(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, tmp_path, "latest")
    sent = np.random.default_rng(1).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    pub.send(encode(Image(data=sent, seq=1)), lambda: False)
    raw = sub.sock.recv_multipart(copy=False) if sub.sock.poll(5000) else pytest.fail("nothing received")
    assert sum(len(f) for f in raw) < 1024  # header + descriptor, not 2.7 MB
    assert len(raw) == 1
    sub._queue.append(raw[0].bytes[len(TOPIC) + 2:])  # its body after b"\0" + topic + b"\0", as drain queues it
    sub._resolve(sub._queue, 1)
    msg = _images(take(sub))[0]
    seg = next(iter(sub.reader.segments.values()))
    assert np.shares_memory(msg.data, seg.array)  # a view of the slot: no copy on this side
    assert not msg.data.flags.writeable
    with pytest.raises(ValueError):
        msg.data.flags.writeable = True
    assert np.array_equal(msg.data, sent)


def test_small_messages_go_inline_and_tcp_subscribers_get_plain_frames_in_a_mixed_set(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    pub = Publisher(ctx, TOPIC, endpoint, run_dir=tmp_path, shm="on")
    local = _subscriber(ctx, TOPIC, endpoint, "drop_oldest", shm="on", run_dir=tmp_path)
    remote = _subscriber(ctx, TOPIC, endpoint, "drop_oldest")  # tcp: plain unless forced
    closing += [pub, local, remote]
    assert local.reader is not None and remote.reader is None
    connected(pub, local)
    connected(pub, remote)
    for seq in range(1, 6):
        pub.send(encode(_image(seq, BIG if seq % 2 else (8, 8, 1))), lambda: False)
    got: dict[str, list[list[Any]]] = {"local": [], "remote": []}

    def both() -> bool:  # (the probes that connected `remote` also reached `local`: skip them)
        got["local"] += [m for m in take(local) if _is_image(m)]
        got["remote"] += [m for m in take(remote) if _is_image(m)]
        return len(got["local"]) == len(got["remote"]) == 5
    wait_for(both, 5, "5 messages on both subscribers")
    for name, messages in got.items():
        images = _images(messages)
        assert [m.seq for m in images] == [1, 2, 3, 4, 5], name
        assert all((m.data == m.seq).all() for m in images), name
    # large ones came through shared memory to the local one only
    assert [isinstance(m[2], zmq.Frame) for m in got["local"]] == [False, True, False, True, False]
    assert all(isinstance(m[2], zmq.Frame) for m in got["remote"])


def test_a_publisher_with_shm_off_serves_shm_subscribers_inline(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, tmp_path, publisher_shm="off")
    pub.send(encode(_image(3)), lambda: False)
    msg = _images(wait_for(lambda: take(sub), 5, "the frame"))[0]
    assert msg.seq == 3 and (msg.data == 3).all()
    assert _segments(tmp_path) == []


def test_every_slot_held_by_the_node_makes_the_publisher_send_inline_not_wait(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, tmp_path, slots=2)
    kept: list[Image] = []  # a node that keeps every frame it gets
    for seq in range(1, 7):
        pub.send(encode(_image(seq)), lambda: pytest.fail("publisher waited"))
        kept += _images(wait_for(lambda: take(sub), 5, f"frame {seq}"))
    assert [m.seq for m in kept] == list(range(1, 7))
    assert all((m.data == m.seq).all() for m in kept)  # held slots were never rewritten
    assert pub.shm_fallbacks == 4  # two slots held, the other four went inline
    assert len(sub.reader.leases) == 2
    kept.clear()
    sub.drain()  # the node let go: the next drain releases the slots
    assert sub.reader.leases == []


_FULL_SPEED_PUBLISHER = textwrap.dedent("""
    import sys, threading, time, zmq, numpy as np
    from pipeline.wire.codec import encode
    from pipeline.wire.messages import Image
    from pipeline.transport.publisher import Publisher
    ctx = zmq.Context()
    pub = Publisher(ctx, "cam/image", sys.argv[1], shm="on", shm_slots=4)
    stop = threading.Event()  # set when the test closes our stdin, or after the hard limit
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    end, seq, longest = time.monotonic() + float(sys.argv[2]), 0, 0.0
    while not stop.is_set() and time.monotonic() < end:
        seq += 1
        msg = Image(data=np.full((256, 1024, 1), seq & 0xFF, dtype=np.uint8), seq=seq)
        t0 = time.monotonic()
        pub.send(encode(msg), lambda: False)
        longest = max(longest, time.monotonic() - t0)
    print("sent", seq, "longest_send_s", longest, "fallbacks", pub.shm_fallbacks, flush=True)
    pub.close()
""")


def _subscriber(*args: Any, **kwargs: Any) -> Subscriber:
    """A Subscriber of camera frames, with the runner's mark for them (`endpoints.BULK_HWM`)."""
    return Subscriber(*args, rcvhwm=BULK_HWM, **kwargs)


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)


@pytest.mark.parametrize("bell", [False, True], ids=["zeromq", "bell"])
def test_a_slow_subscriber_of_a_full_speed_publisher_never_gets_a_torn_frame(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path, bell: bool) -> None:
    endpoint = f"ipc://{tmp_path}/cam.sock"
    sub = _subscriber(ctx, TOPIC, endpoint, "drop_oldest", depth=4, shm="on", bell=bell)
    closing.append(sub)
    poller = zmq.Poller()
    poller.register(sub.sock, zmq.POLLIN)
    if bell:
        poller.register(sub.bell_fd, zmq.POLLIN)
    proc = _child(_FULL_SPEED_PUBLISHER, endpoint, "30")
    try:
        delivered, torn, out_of_order, last = 0, 0, 0, 0
        end = time.monotonic() + 20
        # Run until enough frames came through, not for a fixed time: a loaded CI machine is slow.
        while delivered < 60 and proc.poll() is None and time.monotonic() < end:
            ready = dict(poller.poll(100))
            if not ready:
                continue
            q = sub.drain(sub.bell_fd) if sub.bell_fd in ready else sub.drain()
            while q:
                msg = _images([q.popleft()])[0]
                first = msg.data[0, 0, 0]
                time.sleep(0.003)  # a slow callback (work, not synchronisation)...
                # ...during which the publisher went round the ring many times: the slot is held
                if first != (msg.seq & 0xFF) or not (msg.data == first).all():
                    torn += 1
                out_of_order += msg.seq <= last  # twice, or older than one already delivered
                last = msg.seq
                delivered += 1
                del msg
        out = proc.communicate(input="", timeout=10)[0]
    finally:
        _kill(proc)
    assert "sent" in out, out
    sent = int(out.split()[out.split().index("sent") + 1])
    assert torn == 0 and out_of_order == 0
    assert delivered > 20
    assert sent > 3 * delivered, out  # the publisher ran at its own pace
    assert sub.dropped > 0 and sub.dropped >= sub.shm_overruns
    assert float(out.split("longest_send_s")[1].split()[0]) < 0.5, out  # it never waited for us
    # With bells, such a subscriber takes nearly everything from ZeroMQ: each time it comes back,
    # the slots have gone round (a hole) and the bell path waits for ZeroMQ to pass it.
    assert bell or sub.bell_taken == 0


def test_descriptors_are_untrusted(tmp_path: Path) -> None:
    reader = ShmReader(tmp_path, TOPIC)
    import msgspec
    outside = tmp_path / "secret"
    outside.write_bytes(b"x" * 8192)
    for segment in ["../../etc/passwd", str(outside), "drivecast-0-abc.cam.image.000000000000",
                    run_prefix(tmp_path) + ".cam.other.0123456789ab"]:
        d = DESCRIPTOR_MAGIC + msgspec.msgpack.encode([segment, 0, 1, [[0, 10]]])
        assert reader.resolve(d) is None
    for size in (0, 10, 5000):  # a file of the right name that is not a segment
        junk = segment_dir(tmp_path) / (run_prefix(tmp_path) + f".cam.image.{size:012x}")
        junk.write_bytes(b"\0" * size)
        junk.chmod(0o600)
        try:
            d = DESCRIPTOR_MAGIC + msgspec.msgpack.encode([junk.name, 0, 1, [[0, 10]]])
            assert reader.resolve(d) is None
        finally:
            junk.unlink()
    assert reader.resolve(b"garbage") is None
    assert reader.resolve(DESCRIPTOR_MAGIC + b"\xff\x00") is None
    # a segment name that is not UTF-8 (msgspec raises UnicodeDecodeError; found by bench/fuzz.py)
    assert reader.resolve(DESCRIPTOR_MAGIC + b"\x94\xa2\xff\xfe\x00\x01\x91\x92\x00\x0a") is None
    assert reader.bad == 10 and reader.segments == {}


def test_a_malformed_shared_memory_frame_is_counted_and_not_delivered(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, tmp_path)
    prefix = b"\0" + TOPIC.encode() + b"\0"
    for junk in (prefix, prefix + b"\xff\xff" + b"x" * 10, prefix + b"\x03\x00abcdef"):
        pub.sock.send(junk)  # the one-frame shape of a descriptor message, with nonsense inside
    pub.send(encode(_image(7)), lambda: False)
    msg = _images(wait_for(lambda: take(sub), 5, "the good frame after the bad ones"))[0]
    assert msg.seq == 7 and (msg.data == 7).all()
    assert sub.reader.bad == 3 and sub.dropped == 3


def test_a_message_queued_mid_copy_is_read_only_after_settle_and_dropped_if_its_slot_moved_on(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    """`resolve(wait=False)` (what `Subscriber.take` does) hands out a slot still being copied
    into, unread; `settle` then waits for the copy, or refuses a slot rewritten meanwhile."""
    pub = Publisher(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", shm="on", shm_slots=2)
    closing.append(pub)
    writer = pub._writer
    reader = ShmReader(tmp_path, TOPIC)
    got: list[Any] = []

    def announce(descriptor: bytes) -> None:  # the slot is write-locked and its copy not started
        got.append(reader.resolve(descriptor, wait=False))

    try:
        assert writer.write([np.full(100_000, 7, np.uint8).data], announce)
        first = got[0][0]
        assert len(reader.pending) == 1 and reader.leases == []
        assert reader.settle(first) and (first == 7).all()
        assert reader.pending == [] and len(reader.leases) == 1
        del first, got[:]
        reader.release()
        for value in (8, 9, 10):  # two slots: 10 rewrites the slot of 8 before 8 is settled
            assert writer.write([np.full(100_000, value, np.uint8).data], announce)
        assert not reader.settle(got[0][0]) and reader.overruns == 1
        assert reader.settle(got[2][0]) and (got[2][0] == 10).all()
    finally:
        del got[:]
        reader.close()


def test_a_descriptor_outside_the_slot_or_of_a_rewritten_slot_is_not_delivered(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    import msgspec
    pub = Publisher(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", shm="on", shm_slots=2)
    closing.append(pub)
    writer = pub._writer
    sent: list[bytes] = []
    assert writer.write([np.zeros(100_000, np.uint8).data], sent.append)
    desc = sent[0]
    name, slot, seq, arrays = msgspec.msgpack.decode(desc[len(DESCRIPTOR_MAGIC):])
    reader = ShmReader(tmp_path, TOPIC)
    try:
        bad = DESCRIPTOR_MAGIC + msgspec.msgpack.encode([name, slot, seq, [[0, 10**9]]])
        assert reader.resolve(bad) is None and reader.bad == 1
        writer.write([np.ones(100_000, np.uint8).data], sent.append)
        writer.write([np.ones(100_000, np.uint8).data], sent.append)  # two slots: the first one is rewritten
        assert reader.resolve(desc) is None and reader.overruns == 1
    finally:
        reader.close()


def test_segments_are_owner_only_in_the_run_namespace_and_leave_with_the_publisher(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub = Publisher(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", shm="on")
    sub = _subscriber(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", "latest", shm="on")
    closing.append(sub)
    connected(pub, sub)
    pub.send(encode(_image(1)), lambda: False)
    wait_for(lambda: take(sub), 5, "a frame")
    (seg,) = _segments(tmp_path)
    assert seg.name.startswith(run_prefix(tmp_path) + ".cam.image.")
    assert stat.S_IMODE(seg.stat().st_mode) == 0o600 and seg.stat().st_uid == os.getuid()
    pub.close()
    assert _segments(tmp_path) == []


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_file_descriptor_leak_over_many_frames_and_growing_sizes(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, tmp_path, "latest")
    before = None
    for seq in range(1, 401):
        rows = 64 + 32 * (seq // 50)  # the frame grows now and then: new, larger segments
        pub.send(encode(_image(seq, (rows, 1024, 1))), lambda: False)
        msgs = _images(wait_for(lambda: take(sub), 5, f"frame {seq}"))
        assert all((m.data == m.seq & 0xFF).all() for m in msgs)
        del msgs
        if seq == 20:
            before = _fds()
    assert before is not None and _fds() <= before + 4
    assert len(_segments(tmp_path)) == 1  # the publisher removed the segments it outgrew


def test_kill_9_of_a_publisher_leaves_a_segment_that_its_restart_and_the_launcher_remove(
        tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/cam.sock"
    ctx = zmq.Context()
    sub = _subscriber(ctx, TOPIC, endpoint, "latest", shm="on")
    try:
        for _ in range(2):
            proc = _child(_FULL_SPEED_PUBLISHER, endpoint, "30")
            try:
                wait_for(lambda: sub.sock.poll(10) and take(sub) and len(_segments(tmp_path)) == 1, 10,
                         "frames from the publisher")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            finally:
                _kill(proc)
            assert len(_segments(tmp_path)) == 1  # the dead one's: the restart (next round) replaces it
        assert remove_segments(tmp_path) == 1  # what Supervisor.stop() does for the whole graph
        assert _segments(tmp_path) == []
    finally:
        sub.close()
        ctx.destroy(linger=0)


@pytest.mark.slow
def test_kill_9_of_either_node_mid_stream_the_graph_recovers_and_stop_leaves_no_segment(
        tmp_path: Path, run_base: Path) -> None:
    launch_file = tmp_path / "launch.yaml"
    launch_file.write_text(textwrap.dedent("""
        name: shm
        nodes:
          cam: {run: tests.graph_nodes:Cam, respawn: {max: 3, backoff_s: 0.1}}
          view:
            run: tests.graph_nodes:FrameCheck
            inputs: {image: {topic: cam/image, queue: latest}}
            respawn: {max: 3, backoff_s: 0.1}
    """))
    g = Launched(launch_file, run_base)
    try:
        pids = wait_for(g.node_pids, 30, "both nodes started")
        run_dir = Path(g.manifest()["run_dir"])  # type: ignore[index]

        def frames_after(mark: int) -> bool:
            return g.output().count("[view] INFO frames") > mark
        wait_for(lambda: frames_after(0), 30, "frames at the viewer")
        assert len(_segments(run_dir)) == 1
        for victim in ("cam", "view"):
            mark = g.output().count("[view] INFO frames")
            old = pids[victim]
            os.kill(old, signal.SIGKILL)

            def respawned(victim: str = victim, old: int = old) -> bool:
                p = g.node_pids()
                return bool(p) and p[victim] != old  # type: ignore[index]
            wait_for(respawned, 15, f"{victim} respawned")
            pids = g.node_pids()  # type: ignore[assignment]
            wait_for(lambda mark=mark: frames_after(mark + 1), 30, f"frames again after kill -9 of {victim}")
            assert len(_segments(run_dir)) == 1, f"stale segment after kill -9 of {victim}"
        assert "torn frame" not in g.output()
        os.kill(g.proc.pid, signal.SIGINT)
        rc, log = g.wait(timeout=15)
        assert rc == 130, log
        assert not any(pid_alive(p) for p in pids.values())
        assert _segments(run_dir) == []
    finally:
        g.kill()


def test_a_loaned_frame_is_published_from_its_slot_without_a_copy(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, tmp_path, "latest")
    writer = pub._writer
    for seq in range(1, 4):
        frame = pub.loan(BIG, np.uint8)
        frame.fill(seq)
        (_, slot, _), = writer.loans
        pub.send(encode(Image(data=frame, seq=seq)), lambda: False)
        assert writer.loans == []
        del frame
        msg = _images(wait_for(lambda: take(sub), 5, f"loaned frame {seq}"))[0]
        assert msg.seq == seq and (msg.data == seq).all()
        assert sub.reader.leases[-1][1] == slot  # read from the very slot it was written into
        del msg
    assert writer.fallbacks == 0


def test_a_dropped_loan_frees_its_slot_and_plain_subscribers_get_a_copy_of_a_loaned_frame(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub = Publisher(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", shm="on", shm_slots=2)
    local = _subscriber(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", "drop_oldest", shm="on")
    plain = _subscriber(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", "drop_oldest", shm="off")
    closing += [pub, local, plain]
    connected(pub, local)
    connected(pub, plain)
    unused = [pub.loan(BIG, np.uint8) for _ in range(2)]
    extra = pub.loan(BIG, np.uint8)  # every slot is on loan: a plain array, nothing waits
    assert len(pub._writer.loans) == 2 and extra.shape == BIG
    unused.clear()  # dropped without being published: the slots come back
    frame = pub.loan(BIG, np.uint8)
    assert len(pub._writer.loans) == 1
    frame.fill(1)
    pub.send(encode(Image(data=frame, seq=1)), lambda: False)
    del frame
    for seq in (2, 3):  # rewrite both slots
        pub.send(encode(_image(seq)), lambda: False)
    got: list[Image] = []

    def three() -> bool:
        got.extend(_images([m for m in take(plain) if _is_image(m)]))
        return len(got) == 3
    wait_for(three, 5, "3 frames on the plain subscriber")
    assert [m.seq for m in got] == [1, 2, 3] and all((m.data == m.seq).all() for m in got)


def test_a_descriptor_sent_before_its_copy_is_delivered_once_the_copy_is_complete(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    """The publisher announces a frame before copying it (the subscriber's wake-up overlaps the
    copy): a reader that gets the descriptor mid-copy waits for the copy, then gets all of it."""
    pub = Publisher(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", shm="on", shm_slots=2)
    closing.append(pub)
    reader = ShmReader(tmp_path, TOPIC)
    got: list[Any] = []
    resolving: list[threading.Thread] = []
    waiting = threading.Event()
    real_yield = os.sched_yield

    def yield_and_tell() -> None:
        waiting.set()
        real_yield()

    def announce(descriptor: bytes) -> None:  # the copy starts when this returns
        resolving.append(threading.Thread(target=lambda: got.append(reader.resolve(descriptor))))
        resolving[0].start()
        assert waiting.wait(5), "the reader did not wait for the slot"

    try:
        with mock.patch("pipeline.transport.shm.reader.os.sched_yield", yield_and_tell):
            assert pub._writer.write([np.full(100_000, 7, np.uint8).data], announce)
            resolving[0].join(5)
        frames = got[0]
        assert frames is not None and reader.overruns == 0
        assert len(frames[0]) == 100_000 and (frames[0] == 7).all()
    finally:
        del got[:]
        reader.close()


def test_a_copy_that_does_not_finish_in_time_is_an_overrun_not_a_torn_frame(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub = Publisher(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", shm="on", shm_slots=2)
    closing.append(pub)
    reader = ShmReader(tmp_path, TOPIC)
    results: list[Any] = []
    try:
        def announce(descriptor: bytes) -> None:
            # resolve() while the writer holds the slot: the copy never starts within WAIT_S
            results.append(reader.resolve(descriptor))

        assert pub._writer.write([np.zeros(100_000, np.uint8).data], announce)
        assert results == [None] and reader.overruns == 1
    finally:
        reader.close()


# -- bells: a subscriber woken by the publisher itself, before ZeroMQ's copy of the message --------

def _rings(fd: int, timeout_s: float = 5.0) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(timeout_s * 1000))


def _take_bell(sub: Subscriber) -> list[Image]:
    q = sub.drain(sub.bell_fd)
    out = _images(list(q))
    q.clear()
    return out


def _belled(pub: Publisher, sub: Subscriber) -> None:
    """Publish until the publisher has taken the subscriber's bell (it looks every 20 ms, after a
    send), then empty both of the subscriber's paths."""
    def taken() -> bool:
        pub.send(encode(_image(0)), lambda: False)
        take(sub)
        return bool(pub._writer.bells.fds)  # type: ignore[union-attr]
    wait_for(taken, 5, "the publisher to take the bell")
    wait_for(lambda: not (take(sub) or _take_bell(sub)) and not sub.sock.poll(50), 5, "both paths to drain")
    sub.dropped = 0


def test_a_belled_subscriber_takes_each_frame_from_its_bell_and_skips_the_copy_zeromq_brings(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, tmp_path, bell=True)
    taken = sub.bell_taken
    for seq in (101, 102, 103):
        pub.send(encode(_image(seq)), lambda: False)
        assert _rings(sub.bell_fd)  # type: ignore[arg-type]
        got = _take_bell(sub)  # ZeroMQ's socket untouched so far
        assert [m.seq for m in got] == [seq] and (got[0].data == seq).all()
        assert sub.sock.poll(5000)  # ZeroMQ's copy of it arrives...
        assert take(sub) == []  # ...and is skipped: each frame is delivered once
        del got
    assert sub.bell_taken == taken + 3 and sub.dropped == 0

    # The queue policy applies to what the bell finds as it does to what ZeroMQ brings, and the
    # copies that arrive later neither come through nor count as drops a second time.
    latest = _subscriber(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", "latest", shm="on", bell=True)
    closing.append(latest)
    connected(pub, latest)
    _belled(pub, latest)
    for seq in (201, 202, 203):
        pub.send(encode(_image(seq)), lambda: False)
    wait_for(lambda: latest.sock.poll(10) and latest.sock.getsockopt(zmq.EVENTS), 5, "ZeroMQ's copies")
    got = _take_bell(latest)
    assert [m.seq for m in got] == [203] and latest.dropped == 2
    del got
    wait_for(lambda: not take(latest) and not latest.sock.poll(100), 5, "ZeroMQ's copies skipped")
    assert latest.dropped == 2


def test_a_restarted_publisher_gets_the_bell_again_and_its_frames_are_not_taken_for_copies(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    """A new incarnation numbers its messages above its predecessor's (CLOCK_MONOTONIC), so the
    subscriber's "seen up to" does not swallow them, and the subscriber hands its bell to it."""
    endpoint = f"ipc://{tmp_path}/cam.sock"
    sub = _subscriber(ctx, TOPIC, endpoint, "drop_oldest", shm="on", bell=True)
    closing.append(sub)
    for life in range(2):
        pub = Publisher(ctx, TOPIC, endpoint, shm="on")
        try:
            connected(pub, sub)
            pub.send(encode(_image(77)), lambda: False)  # its first frame comes by ZeroMQ...
            got = _images(wait_for(lambda: take(sub), 5, f"the first frame of life {life}"))
            assert [m.seq for m in got] == [77]
            _belled(pub, sub)  # ...and the bell goes to this life
            for seq in range(1, 41):
                pub.send(encode(_image(seq)), lambda: False)
                assert _rings(sub.bell_fd)  # type: ignore[arg-type]
                got = _take_bell(sub)
                assert [m.seq for m in got] == [seq] and (got[0].data == seq).all(), f"life {life}"
            del got
            late: list[Any] = []
            wait_for(lambda late=late: late.extend(take(sub)) or not sub.sock.poll(50), 5, "ZeroMQ's copies")
            assert late == []  # all skipped
        finally:
            pub.close()


def test_the_publisher_forgets_the_bells_of_subscribers_that_left_and_refuses_bad_ones(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub = Publisher(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", shm="on")
    closing.append(pub)
    writer = pub._writer
    assert writer is not None
    assert stat.S_IMODE(os.stat(bell_path(tmp_path, TOPIC)).st_mode) == 0o600

    def forgotten() -> bool:
        pub.send(encode(_image(0)), lambda: False)
        return not writer.bells.fds
    counts = []
    for _ in range(3):
        sub = _subscriber(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", "latest", shm="on", bell=True)
        try:
            connected(pub, sub)
            _belled(pub, sub)
        finally:
            sub.close()
        wait_for(forgotten, 5, "the publisher to forget a closed subscriber's bell")
        counts.append(_fds())
    # nothing left behind per subscriber that came and went (ZeroMQ closes its own fds in the background)
    wait_for(lambda: _fds() <= counts[0], 5, f"fds back to {counts[0]} (counts {counts})")

    # A bell is a pipe, sent with b"bell" by this user; anything else is refused.
    r, w = os.pipe()
    regular = os.open(tmp_path / "plain-file", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for message, fds in ((b"bell", [regular]), (b"nope", [w]), (b"bell", [])):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                conn.connect(str(bell_path(tmp_path, TOPIC)))
                socket.send_fds(conn, [message], fds)
                conn.settimeout(5)

                def refused(conn: socket.socket = conn) -> bool:
                    pub.send(encode(_image(0)), lambda: False)
                    return _rings(conn.fileno(), 0.02) and conn.recv(1) == b""  # the publisher hung up
                wait_for(refused, 5, f"the publisher to refuse {message!r} with {fds}")
                assert writer.bells.fds == []
            finally:
                conn.close()
        # A connection that sends nothing does not hold the publisher up, and is dropped after a while.
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            silent.connect(str(bell_path(tmp_path, TOPIC)))
            longest = 0.0

            def hung_up() -> bool:
                nonlocal longest
                t0 = time.monotonic()
                pub.send(encode(_image(0)), lambda: False)
                longest = max(longest, time.monotonic() - t0)
                return _rings(silent.fileno(), 0.02) and silent.recv(1) == b""
            wait_for(hung_up, 5, "the publisher to drop a connection that sent no bell")
            assert longest < 0.05
        finally:
            silent.close()

        # A good one is taken and rung (once a shared-memory subscriber makes the publisher use the slots).
        sub = _subscriber(ctx, TOPIC, f"ipc://{tmp_path}/cam.sock", "latest", shm="on")
        closing.append(sub)
        connected(pub, sub)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(str(bell_path(tmp_path, TOPIC)))
            socket.send_fds(conn, [b"bell"], [w])

            def rung() -> bool:
                pub.send(encode(_image(0)), lambda: False)
                return len(writer.bells.fds) == 1 and _rings(r, 0.05)
            wait_for(rung, 5, "a good bell taken and rung")
            # The publisher writes through a file description of its own: non-blocking whatever
            # the sender does to its own (a full pipe must never stall the publisher).
            assert fcntl.fcntl(w, fcntl.F_GETFL) & os.O_NONBLOCK == 0
            assert fcntl.fcntl(writer.bells.fds[0], fcntl.F_GETFL) & os.O_NONBLOCK
        finally:
            conn.close()
    finally:
        for fd in (r, w, regular):
            os.close(fd)


def test_a_node_takes_shared_memory_frames_through_its_bell_each_exactly_once(run_base: Path) -> None:
    endpoint = f"ipc://{run_base}/cam.sock"
    manifest = {
        "name": "t", "run_dir": str(run_base), "clock": "",
        "topics": {
            TOPIC: {"schema": Image.SCHEMA, "endpoint": endpoint, "lossless_endpoint": None},
            "view/diagnostics": {"schema": "drivecast/Diagnostics", "endpoint": f"ipc://{run_base}/diag.sock",
                                 "lossless_endpoint": None},
        },
        "nodes": {"view": {"run": "tests.graph_nodes:FrameCheck", "params": {},
                           "inputs": {"image": {"topic": TOPIC, "queue": "drop_oldest", "depth": 10}}}},
    }
    ctx = zmq.Context()
    pub = Publisher(ctx, TOPIC, endpoint, run_dir=run_base)
    rt = ProcessRuntime(msgspec.convert(manifest, Manifest), "view", ctx=ctx)
    thread = threading.Thread(target=rt.run, daemon=True)
    thread.start()
    try:
        item = next(iter(rt.inputs.values()))
        sub = item[2]
        assert sub.bell_fd is not None and rt.inputs == {sub.bell_fd: item, sub.sock: item}  # bell and socket

        def first() -> bool:  # resent until the subscription is up (slow joiner)
            pub.send(encode(_image(1)), lambda: False)
            return getattr(rt.node, "n", 0) > 0
        wait_for(first, 20, "the first frame at the node")

        def done(seq: int) -> bool:  # frame `seq` delivered and its callback over (the runner sets
            # _last_seq before the callback; it times every callback it has finished)
            return not thread.is_alive() or rt._last_seq.get("image") == seq and \
                len(rt.stats._cb_us) == rt.stats.counts["in.image"]
        pub.send(encode(_image(2)), lambda: False)  # after it, no probe is on its way any more
        wait_for(lambda: done(2), 5, "frame 2")
        n = rt.node.n  # type: ignore[attr-defined]
        for seq in range(3, 63):
            pub.send(encode(_image(seq)), lambda: False)
            wait_for(lambda seq=seq: done(seq), 5, f"frame {seq}")
            time.sleep(0.002)  # paced like a camera (ZeroMQ's copy arrives and is skipped meanwhile)
        assert thread.is_alive()  # FrameCheck raises on a torn frame
        assert rt.node.n == n + 60  # type: ignore[attr-defined]  # none lost, none twice
        # mostly through the bell (at least 50 of 60 in every quiet run here; 26 with two CPU hogs beside it)
        assert sub.bell_taken > 0 and sub.dropped == 0
    finally:
        rt.request_stop(rt.node, "test over")
        thread.join(timeout=5)
        rt.node.shutdown()
        rt.close()
        pub.close()
        ctx.term()


def test_the_bell_never_delivers_ahead_of_what_zeromq_still_carries(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    """The runner looks at the bell before the socket. A message that went inline (small, or
    every slot held) and messages whose slots went round while the subscriber was away are
    holes in the writer's numbers: the bell stops there and ZeroMQ delivers in order."""
    pub, sub = _pair(ctx, closing, tmp_path, bell=True)

    def deliver(count: int) -> list[int]:
        got: list[int] = []

        def all_there() -> bool:
            for q in (sub.drain(sub.bell_fd), sub.drain()):  # in the runner's order
                got.extend(m.seq for m in _images(list(q)))
                q.clear()
            return len(got) >= count
        wait_for(all_there, 5, f"{count} frames")
        assert not sub.sock.poll(100) or not take(sub)
        return got

    pub.send(encode(_image(500, (4, 4, 1))), lambda: False)  # below the threshold: inline
    pub.send(encode(_image(501)), lambda: False)
    assert _rings(sub.bell_fd)  # type: ignore[arg-type]
    assert _take_bell(sub) == []  # 501 follows a hole: not before 500
    assert deliver(2) == [500, 501]
    pub.send(encode(_image(502)), lambda: False)
    assert _rings(sub.bell_fd) and [m.seq for m in _take_bell(sub)] == [502]  # type: ignore[arg-type]
    assert deliver(0) == []  # ZeroMQ's copy skipped

    for seq in range(601, 607):  # six frames into four slots while the subscriber is away
        pub.send(encode(_image(seq)), lambda: False)
    assert deliver(4) == [603, 604, 605, 606]
    assert sub.dropped == 2 and sub.shm_overruns == 2  # 601 and 602 counted, not lost silently


def test_a_body_that_is_not_what_its_slots_record_holds_is_not_delivered(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    """`rung` reads a record without the lock; once the slot is locked, the record must hold the
    same bytes (on a CPU that reorders memory accesses, an early read could be torn)."""
    pub, sub = _pair(ctx, closing, tmp_path, bell=True)
    assert sub.reader is not None
    for tamper in (False, True):
        msg = _image(9)
        msg.frame_id = "left"
        pub.send(encode(msg), lambda: False)
        assert _rings(sub.bell_fd)  # type: ignore[arg-type]
        bodies = sub.reader.rung()
        assert len(bodies) == 1 and b"left" in bodies[0]
        body = bodies[0].replace(b"left", b"LEFT") if tamper else bodies[0]
        overruns = sub.shm_overruns
        sub._queue.append(body)
        sub._resolve(sub._queue, 1)
        got = _images(list(sub._queue))
        sub._queue.clear()
        if tamper:
            assert got == [] and sub.shm_overruns == overruns + 1
        else:
            assert [m.frame_id for m in got] == ["left"] and sub.shm_overruns == overruns
        del got


def test_bells_go_on_across_a_segment_growing_and_the_notifier_stops_with_the_publisher(
        ctx: zmq.Context, closing: list[Any], tmp_path: Path) -> None:
    pub, sub = _pair(ctx, closing, tmp_path, bell=True)
    assert sub.reader is not None and pub._writer is not None
    notifier = pub._writer.bells._notifier
    assert notifier is not None and notifier.is_alive()
    for rows in (256, 1024):  # the second size needs a new, larger segment
        segment = sub.reader.current
        pub.send(encode(_image(1, (rows, 1024, 1))), lambda: False)  # by ZeroMQ: maps the new segment
        got = _images(wait_for(lambda: take(sub), 5, f"a {rows}-row frame"))
        assert [m.data.shape[0] for m in got] == [rows]
        assert (sub.reader.current != segment) == (rows == 1024)
        del got
        _belled(pub, sub)  # the bell went to the new segment's publisher (the same one here)
        for seq in (2, 3):
            pub.send(encode(_image(seq, (rows, 1024, 1))), lambda: False)
            assert _rings(sub.bell_fd)  # type: ignore[arg-type]
            got = _take_bell(sub)
            assert [(m.seq, m.data.shape[0]) for m in got] == [(seq, rows)]
            del got
    pub.close()
    assert not notifier.is_alive()
    assert not bell_path(tmp_path, TOPIC).exists()
