"""Fuzzing, for longer than the test suite: bad bytes in every place the runtime reads them.

    python bench/fuzz.py [--seconds N] [--json FILE] [--seed S] [--only SECTION ...] [--allow-known]

Sections (the time is shared equally):

- codec:   random, truncated, oversized and type-confused multipart messages, and hostile valid messages,
           straight into `pipeline.wire.codec.decode`; valid ones must round-trip exactly.
- launch:  random YAML trees near the launch schema, and byte/line mutations of the real launch.yaml, into
           `pipeline.runtime.graph.load_graph` (only ConfigError may come out).
- nodes:   every ready-made node with inputs, in a ProcessRuntime, fed the cases of tests/test_node_fuzz.py
           through `ProcessRuntime._deliver` (bad messages counted per kind, valid ones reach `on_<input>`,
           10 s deadline per message).
- shm:     damaged shared-memory message bodies (`pipeline.transport.shm`), as ZeroMQ brings them and as a bell finds
           them in a slot's record, through `Subscriber._resolve`/`drain`, `decode` and `ShmReader.ready`.
- mcap:    damaged drivecast MCAP files (cuts, bit flips, zeroed and duplicated ranges) through
           `open_recording`, `info()`, `items()` and `decode` (only RecordingError/DecodeError may come out).
- bag:     the same damage applied to a ROS 1 bag and a ROS 2 mcap from ../shared/recordings (if present).
- onnx:    damaged and mismatched step models (byte damage; metadata keys removed or given wrong values, via
           the `onnx` package) into `export.runtime.step_model.StepModel`, then one step (only ModelError may come out).
           Needs torch to export the tiny models; skipped without it.

Each case ends in an outcome (`dropped.bad_header`, `RecordingError`, `ok`, ...), counted per section. Any
other exception, a hang, or a broken invariant is a crash, counted by signature (type, file:line, function).
Exit status 1 if there was any crash; `--allow-known` does not count the crashes listed in
tests/test_node_fuzz.py KNOWN_BUGS (reported, pinned by tests, fix pending).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline.errors import ConfigError, DecodeError  # noqa: E402
from pipeline.wire.codec import decode, encode  # noqa: E402
from pipeline.wire.messages import SCHEMAS  # noqa: E402
from tests.test_node_fuzz import (  # noqa: E402
    KNOWN_BUGS,
    NODES,
    Hang,
    Harness,
    StampSource,
    deadline,
    hostile_message,
    known_bug,
    malformed,
    node_params,
    wire,
)

RECORDINGS = REPO.parent / "shared" / "recordings"
CASE_DEADLINE_S = 10.0


def signature(exc: BaseException) -> str:
    """`Type at file:line in function` of the innermost frame (what groups crashes of one bug)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    f = frames[-1]
    path = f.filename
    for root in (str(REPO) + "/", "site-packages/"):
        if root in path:
            path = path.split(root, 1)[1]
    return f"{type(exc).__name__} at {path}:{f.lineno} in {f.name}"


class Section:
    """Counts of one section: cases, outcomes, crashes by signature (with one example each)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases = 0
        self.outcomes: Counter[str] = Counter()
        self.crashes: Counter[str] = Counter()
        self.known: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.skipped = ""

    def run(self, case: Callable[[], str], what: str) -> None:
        self.cases += 1
        try:
            with deadline(CASE_DEADLINE_S, what):
                self.outcomes[case()] += 1
        except Hang as exc:
            self._crash(f"hang: {exc}", what)
        except KnownCrash as exc:
            b = KNOWN_BUGS[exc.bug]
            self.known[exc.bug] += 1
            self._crash(f"{b.exc.__name__} in {b.file} {b.function} [known: {exc.bug}]", what)
        except Exception as exc:
            bug = known_bug(exc)
            if bug is not None:
                self.known[bug] += 1
            self._crash(signature(exc) + (f" [known: {bug}]" if bug else ""), f"{what}: {str(exc)[:200]}")

    def _crash(self, sig: str, example: str) -> None:
        self.crashes[sig] += 1
        self.examples.setdefault(sig, example)

    def to_json(self) -> dict[str, Any]:
        return {"cases": self.cases, "outcomes": dict(self.outcomes.most_common()),
                "crashes": dict(self.crashes.most_common()), "examples": self.examples,
                "known_bugs": dict(self.known), "skipped": self.skipped}


# -- codec -----------------------------------------------------------------------------------------------------

def fuzz_codec(sec: Section, rnd: random.Random, until: float, workdir: Path) -> None:
    schemas = sorted(SCHEMAS.values(), key=lambda c: c.SCHEMA)
    stamps = StampSource(max_jump_ns=2**62)
    while time.monotonic() < until:
        cls = rnd.choice(schemas)
        if rnd.random() < 0.3:
            msg = hostile_message(rnd, cls, stamps)

            def roundtrip(msg: Any = msg) -> str:
                sent = [bytes(f) for f in encode(msg, publish_ns=7)]
                got, publish_ns = decode(sent, expect=type(msg))
                # compared as bytes: NaN != NaN in a Diagnostics dict would make `==` fail on a perfect copy
                if [bytes(f) for f in encode(got, publish_ns=publish_ns)] != sent:
                    raise AssertionError(f"{type(msg).SCHEMA} did not round-trip")
                return "roundtrip"
            sec.run(roundtrip, f"roundtrip {cls.SCHEMA}")
            continue
        kind, frames = malformed(rnd, cls, stamps)

        def bad(frames: list[Any] = frames, cls: Any = cls) -> str:
            try:
                decode(frames[1:], expect=cls)
            except DecodeError as exc:
                return f"{exc.kind}"
            return "decoded"
        sec.run(bad, f"malformed {kind} {cls.SCHEMA}")


# -- launch files --------------------------------------------------------------------------------------------

_KEYS = ["name", "nodes", "run", "params", "inputs", "respawn", "required", "machine", "topic", "queue", "depth",
         "max", "backoff_s", "transport", "kind", "clock", "machines", "security", "keys", "agents", "rate_hz",
         "tracks", "sim", "printer", "x"]
_SCALARS = [None, True, False, 0, -1, 10**6, 1.5, float("nan"), float("inf"), "", "nodes.sim:TrafficSim",
            "nodes.printer:TrackPrinter", "sim/tracks", "block", "latest", "drop_oldest", "tcp", "ipc",
            "os:system", "a:b", "pipeline.runtime.runner:main", "../../x", "\x00"]


def _tree(rnd: random.Random, depth: int = 0) -> Any:
    r = rnd.random()
    if depth > 3 or r < 0.4:
        return rnd.choice(_SCALARS)
    if r < 0.55:
        return [_tree(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return {rnd.choice(_KEYS): _tree(rnd, depth + 1) for _ in range(rnd.randint(0, 5))}


def _mutate_text(rnd: random.Random, text: str) -> str:
    lines = text.splitlines()
    for _ in range(rnd.randint(1, 4)):
        op = rnd.random()
        if op < 0.3 and lines:
            del lines[rnd.randrange(len(lines))]
        elif op < 0.5 and lines:
            i = rnd.randrange(len(lines))
            lines.insert(rnd.randrange(len(lines)), lines[i])
        elif op < 0.8 and lines:
            i = rnd.randrange(len(lines))
            s = lines[i]
            j = rnd.randrange(len(s) + 1)
            lines[i] = s[:j] + rnd.choice(["", ":", "{", "]", "- ", "  ", "&a", "*a", "!!python/object:os.system",
                                              "\t", "'", "0x", "~", "<<: *a"]) + s[j + rnd.randint(0, 3):]
        else:
            lines.append(rnd.choice(["x: [", "  - 1", "nodes: {}", ": :", "%YAML 1.1", "---", "..."]))
    return "\n".join(lines)


def fuzz_launch(sec: Section, rnd: random.Random, until: float, workdir: Path) -> None:
    from pipeline.runtime.graph import load_graph

    base = (REPO / "launch.yaml").read_text()
    path = workdir / "launch.yaml"
    while time.monotonic() < until:
        if rnd.random() < 0.5:
            text = yaml.safe_dump({rnd.choice(_KEYS): _tree(rnd) for _ in range(rnd.randint(0, 5))})
            what = "random tree"
        else:
            text = _mutate_text(rnd, base)
            what = "mutated launch.yaml"
        path.write_text(text)

        def case() -> str:
            try:
                load_graph(path)
            except ConfigError as exc:
                if not str(exc).startswith(str(path)):
                    raise AssertionError(f"ConfigError does not name the file: {exc}") from None
                return "ConfigError"
            return "valid"
        sec.run(case, what)


# -- node inputs ---------------------------------------------------------------------------------------------

def fuzz_nodes(sec: Section, rnd: random.Random, until: float, workdir: Path) -> None:
    harnesses: list[Harness] = []
    try:
        for key in sorted(NODES):
            cls = NODES[key]
            d = Path(tempfile.mkdtemp(prefix="n-", dir=workdir))  # short: ipc paths stay under 100 chars
            try:
                harnesses.append(Harness(cls, d, node_params(cls, d, _models)))
            except BaseException as exc:  # a node that cannot start here (no torch for the predictor's models)
                sec.outcomes[f"not started: {key}: {type(exc).__name__}"] += 1
        stamps = {id(h): StampSource() for h in harnesses}
        while time.monotonic() < until and harnesses:
            h = rnd.choice(harnesses)
            inp = rnd.choice(sorted(h.cls.inputs))
            schema = h.cls.inputs[inp]
            if rnd.random() < 0.5:
                kind, frames = malformed(rnd, schema, stamps[id(h)])
            else:
                kind, frames = "hostile", wire(hostile_message(rnd, schema, stamps[id(h)]))
            name = h.cls.__name__

            def case(h: Harness = h, inp: str = inp, frames: list[Any] = frames) -> str:
                out = h.deliver(inp, frames, timeout_s=CASE_DEADLINE_S)
                if out.startswith("known."):  # deliver tolerates these for the test suite; here they count
                    raise KnownCrash(out[6:])
                return out
            sec.run(case, f"{name}.on_{inp} {kind}")
            if sec.cases % 200 == 0:
                def tick(h: Harness = h) -> str:
                    h.tick()
                    return "timers fired"
                sec.run(tick, f"{name} timers")
    finally:
        for h in harnesses:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the evaluator prints its table
                    h.close()
            except Exception as exc:
                sec._crash(signature(exc), f"{h.cls.__name__}.shutdown: {exc}")


class KnownCrash(Exception):
    """A node crash that matches a KNOWN_BUGS signature (re-raised so that it is counted as a crash)."""

    def __init__(self, bug: str) -> None:
        super().__init__(bug)
        self.bug = bug


_MODEL_DIR: dict[str, Path] = {}


def _models() -> dict[str, Path]:
    if not _MODEL_DIR:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise RuntimeError("torch is not installed: no models to fuzz the predictor with")
        from tests.predictor_nodes import make_models

        where = tempfile.mkdtemp(prefix="dc-bf-models-")
        atexit.register(shutil.rmtree, where, True)
        _MODEL_DIR.update(make_models(Path(where)))
    return _MODEL_DIR


# -- recordings ----------------------------------------------------------------------------------------------

def _damage(rnd: random.Random, data: bytes) -> tuple[str, bytes]:
    b = bytearray(data)
    n = len(b)
    op = rnd.choice(("cut", "flip", "zero", "duplicate", "insert", "flip_tail"))
    if op == "cut":
        return op, bytes(b[: rnd.randrange(n)])
    if op == "flip":
        for _ in range(rnd.randint(1, 32)):
            b[rnd.randrange(n)] ^= rnd.randrange(1, 256)
    elif op == "flip_tail":  # the summary and footer of an MCAP file
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(max(0, n - 4096), n)] ^= rnd.randrange(1, 256)
    elif op == "zero":
        i = rnd.randrange(n)
        b[i:i + rnd.randint(1, 4096)] = bytes(min(n - i, 4096))[: len(b[i:i + 4096])]
    elif op == "duplicate":
        i, k = rnd.randrange(n), rnd.randint(1, 4096)
        b[i:i] = b[i:i + k]
    else:
        i = rnd.randrange(n)
        b[i:i] = rnd.randbytes(rnd.randint(1, 64))
    return op, bytes(b)


def _read_all(path: Path) -> str:
    from pipeline.recordings.base import RecordingError
    from pipeline.recordings.reader import open_recording

    try:
        with open_recording(path) as rec:
            info = rec.info()
            n = bad = 0
            for item in rec.items():
                n += 1
                try:
                    decode(item.frames)
                except DecodeError:
                    bad += 1
    except RecordingError:
        return "RecordingError"
    # a damaged summary can misstate the count (the summary has no CRC of its own): counted, not a crash
    agree = "" if n == info.count else ", count differs from info()"
    return ("truncated" if info.truncated else "read, bad messages" if bad else "read") + agree


def _drive(workdir: Path) -> bytes:
    from pipeline.recordings.writer import Recorder
    from tests.test_node_fuzz import hostile_message as hm

    rnd = random.Random(0)
    stamps = StampSource()
    path = workdir / "drive.mcap"
    with Recorder(path, chunk_size=16 * 1024, flush_s=0) as rec:
        for i in range(400):
            cls = rnd.choice([c for c in SCHEMAS.values() if c.ARRAYS])
            msg = hm(rnd, cls, stamps, max_rows=6)
            msg.stamp_ns = i
            try:
                rec.write(f"t/{cls.SCHEMA.split('/')[1].lower()}", encode(msg), 1_000_000_000 + i * 10_000_000)
            except Exception:  # a hostile message the Foxglove mirror cannot convert: not this section's subject
                continue
    return path.read_bytes()


def fuzz_recordings(sec: Section, rnd: random.Random, until: float, workdir: Path,
                    sources: list[tuple[str, bytes]]) -> None:
    if not sources:
        sec.skipped = "no source recordings"
        return
    while time.monotonic() < until:
        suffix, data = rnd.choice(sources)
        op, bad = _damage(rnd, data)
        path = workdir / f"bad{suffix}"
        path.write_bytes(bad)

        def case(path: Path = path) -> str:
            return _read_all(path)
        sec.run(case, f"{op} {suffix}")


# -- onnx ----------------------------------------------------------------------------------------------------

def fuzz_onnx(sec: Section, rnd: random.Random, until: float, workdir: Path) -> None:
    try:
        models = _models()
    except Exception as exc:
        sec.skipped = str(exc)
        return
    from export.runtime.step_model import ModelError, StepModel

    onnx: Any
    try:
        import onnx
    except ImportError:
        onnx = None
    sources = {k: Path(v).read_bytes() for k, v in models.items()}
    protos = {k: onnx.load_from_string(v) for k, v in sources.items()} if onnx else {}
    path = workdir / "bad.onnx"
    while time.monotonic() < until:
        kind = rnd.choice(sorted(sources))
        if onnx is not None and rnd.random() < 0.5:
            proto = onnx.ModelProto()
            proto.CopyFrom(protos[kind])
            props = {p.key: p.value for p in proto.metadata_props}
            key = rnd.choice(sorted(props))
            if rnd.random() < 0.3:
                props.pop(key)
                what = f"metadata {key} removed"
            else:
                other = protos[rnd.choice(sorted(protos))]
                pool = ["", "0", "-1", "1e9", "nan", "lstm", "gru", "{}", "[]", "null", '{"scale": 0}',
                        *(p.value for p in other.metadata_props)]
                props[key] = rnd.choice(pool)
                what = f"metadata {key}={props[key][:20]!r}"
            del proto.metadata_props[:]
            onnx.helper.set_model_props(proto, props)
            path.write_bytes(proto.SerializeToString())
        else:
            op, data = _damage(rnd, sources[kind])
            path.write_bytes(data)
            what = f"bytes {op}"

        def case() -> str:
            try:
                m = StepModel(path)
                x = np.zeros((3, m.meta.input_dim), np.float32)
                m.step(x, m.zero_state(3))
            except ModelError:
                return "ModelError"
            return "loaded and stepped"
        sec.run(case, f"{kind} {what}")


# -- shared memory -------------------------------------------------------------------------------------------

def fuzz_shm(sec: Section, rnd: random.Random, until: float, workdir: Path) -> None:
    """Damaged shared-memory message bodies, as ZeroMQ brings them and as a bell finds them in a
    slot's record: each is delivered (arrays inside the slot, checked by `decode`) or dropped and
    counted, never an exception."""
    import zmq

    from pipeline.transport.publisher import Publisher
    from pipeline.transport.shm.segment import BODY, META_BYTES, META_LEN, record_start
    from pipeline.transport.subscriber import Subscriber
    from pipeline.wire.messages import Image
    from tests.conftest import connected, take, wait_for

    ctx = zmq.Context()
    d = Path(tempfile.mkdtemp(prefix="s-", dir=workdir))
    endpoint = f"ipc://{d}/cam.sock"
    pub = Publisher(ctx, "cam/image", endpoint, shm="on")
    sub = Subscriber(ctx, "cam/image", endpoint, "drop_oldest", depth=64, shm="on", bell=True)
    writer, reader = pub._writer, sub.reader
    assert writer is not None and reader is not None
    try:
        connected(pub, sub)

        def belled() -> bool:  # until the publisher has the subscriber's bell, so records are stored
            pub.send(encode(Image(data=np.zeros((64, 1024, 1), np.uint8))), lambda: False)
            take(sub)
            return bool(writer.bells.fds)
        wait_for(belled, 10, "the bell handed in")
        n = 0
        while time.monotonic() < until:
            n += 1
            frames = encode(Image(data=np.full((rnd.choice((64, 80)), 1024, 1), n & 0xFF, np.uint8), seq=n))
            bodies: list[bytes] = []

            def capture(desc: bytes, f: list[Any] = frames, out: list[bytes] = bodies) -> None:
                out.append(BODY.pack(writer.seq, len(desc)) + desc + f[0])  # as Publisher._send_shm sends it
            if not writer.write(frames[1:], capture, header=frames[0]):
                raise RuntimeError(f"fuzz harness: every slot held ({len(reader.leases)} leases)")
            op, damaged = _damage(rnd, bodies[0]) if rnd.random() < 0.9 else ("intact", bodies[0])
            where = rnd.choice(("zeromq", "record"))

            def case(damaged: bytes = damaged, where: str = where) -> str:
                before = (sub.dropped, reader.bad, reader.overruns)
                if where == "zeromq":
                    sub._queue.append(damaged)
                    sub._resolve(sub._queue, 1)
                else:
                    start = record_start((writer.next_slot - 1) % writer.slots)
                    body = damaged[:META_BYTES - META_LEN.size]
                    length = len(body) if rnd.random() < 0.8 else rnd.randrange(1 << 32)
                    META_LEN.pack_into(writer.seg.mm, start, length)  # type: ignore[union-attr]
                    writer.seg.mm[start + 4:start + 4 + len(body)] = body  # type: ignore[union-attr]
                    reader.last_seq = writer.seq - 1  # the bell's next message is this one
                    sub.drain(sub.bell_fd)
                out = []
                while sub._queue:
                    msg = sub._queue.popleft()
                    try:
                        decode(msg[1:], expect=Image)
                        out.append("delivered" if reader.ready(msg) else "overrun at settle")
                    except DecodeError as exc:
                        out.append(f"header {exc.kind}")
                    del msg
                sub.release()
                # Three names in a row that match but do not open make it fall back to plain frames
                # (pipeline/transport/subscriber.py): by design, and the end of this harness's subscriber.
                reader.unreachable = 0
                after = (sub.dropped, reader.bad, reader.overruns)
                what = "+".join(out) or ("bad" if after[1] > before[1] else "overrun" if after[2] > before[2]
                                         else "not taken")
                return f"{where}: {what}"
            sec.run(case, f"shm {where} body, {op}")
    finally:
        sub.close()
        pub.close()
        ctx.destroy(linger=0)


# -- main ----------------------------------------------------------------------------------------------------

SECTIONS = ("codec", "launch", "nodes", "shm", "mcap", "bag", "onnx")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0, help="total run time (default 600)")
    ap.add_argument("--json", default=None, help="write the counts here")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time-based, printed)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--allow-known", action="store_true", help="crashes of KNOWN_BUGS do not fail the run")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"fuzz: {args.seconds:g} s over {', '.join(args.only)}; seed {seed}", flush=True)
    import logging

    logging.disable(logging.WARNING)  # bad messages are logged once per kind per node: noise here
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy on NaN/inf inputs: expected here
    sections: dict[str, Section] = {}
    share = args.seconds / len(args.only)
    with tempfile.TemporaryDirectory(prefix="dc-fz-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        for i, name in enumerate(args.only):
            sec = sections[name] = Section(name)
            rnd = random.Random(seed * 31 + i)
            until = time.monotonic() + share
            t0 = time.monotonic()
            if name == "codec":
                fuzz_codec(sec, rnd, until, workdir)
            elif name == "launch":
                fuzz_launch(sec, rnd, until, workdir)
            elif name == "nodes":
                fuzz_nodes(sec, rnd, until, workdir)
            elif name == "shm":
                fuzz_shm(sec, rnd, until, workdir)
            elif name == "mcap":
                fuzz_recordings(sec, rnd, until, workdir, [(".mcap", _drive(workdir))])
            elif name == "bag":
                srcs = [(p.suffix, p.read_bytes()) for p in (
                    RECORDINGS / "husky_outdoor_gps_imu_odom_ros1" / "test1.bag",
                    RECORDINGS / "turtlebot_nav2_sim_ros2_mcap" / "nav2_turtlebot.mcap") if p.exists()]
                fuzz_recordings(sec, rnd, until, workdir, srcs)
            elif name == "onnx":
                fuzz_onnx(sec, rnd, until, workdir)
            took = time.monotonic() - t0
            print(f"  {name:<7} {sec.cases:>7} cases in {took:5.1f} s, {sum(sec.crashes.values())} crashes"
                  + (f" (skipped: {sec.skipped})" if sec.skipped else ""), flush=True)

    total = sum(s.cases for s in sections.values())
    crashes = sum(sum(s.crashes.values()) for s in sections.values())
    known = sum(sum(s.known.values()) for s in sections.values())
    print(f"\n{'section':<8}{'cases':>9}{'crashes':>9}  outcomes (top 6)")
    for s in sections.values():
        top = ", ".join(f"{k} {v}" for k, v in s.outcomes.most_common(6))
        print(f"{s.name:<8}{s.cases:>9}{sum(s.crashes.values()):>9}  {top}")
    print(f"{'total':<8}{total:>9}{crashes:>9}")
    for s in sections.values():
        for sig, n in s.crashes.most_common():
            print(f"CRASH {s.name}: {n} x {sig}\n    e.g. {s.examples[sig]}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seconds": args.seconds, "seed": seed, "cases": total, "crashes": crashes, "known_bug_crashes": known,
            "known_bugs": {k: v.test for k, v in KNOWN_BUGS.items()},
            "sections": {n: s.to_json() for n, s in sections.items()}}, indent=1))
    failing = crashes - (known if args.allow_known else 0)
    return 1 if failing else 0


if __name__ == "__main__":
    if "DRIVECAST_RUN_DIR" not in os.environ:  # players write run manifests: keep them out of the user's runs
        os.environ["DRIVECAST_RUN_DIR"] = tempfile.mkdtemp(prefix="dc-fzr-", dir="/tmp")
        atexit.register(shutil.rmtree, os.environ["DRIVECAST_RUN_DIR"], True)
    sys.exit(main())
