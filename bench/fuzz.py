"""Fuzzing, for longer than the test suite: bad bytes in every place the runtime reads them.

    python bench/fuzz.py [--cases N] [--seconds S] [--json FILE] [--seed S] [--only NAME ...] [--allow-known]

Targets, by section (`--only` takes section or target names):

- codec:    codec: random, truncated, oversized and type-confused multipart messages, and hostile valid
            messages, of every schema straight into `pipeline.wire.codec.decode`; valid ones must round-trip.
- launch:   launch: random YAML trees near the launch schema, and line damage of the real launch.yaml, into
            `load_graph` (only a ConfigError naming the file may come out); set: `--set` overrides.
- nodes:    node.<Class>, one per ready-made node with inputs, in a ProcessRuntime, fed the cases of
            tests/test_node_fuzz.py through `ProcessRuntime._deliver` (bad messages counted per kind, valid
            ones reach `on_<input>`), its timers fired every 50 cases.
- shm:      shm: damaged shared-memory message bodies, as ZeroMQ brings them and as a bell finds them in a
            slot's record, through `Subscriber._resolve`/`drain`, `decode` and `ShmReader.ready`.
- mcap:     mcap (`open_recording`), record (`to_item`), salvage (`drivecast bag recover`), export
            (`drivecast bag export`) and lockstep (`drivecast play --lockstep`) of damaged drivecast MCAP files.
- bag:      ros1, ros2-mcap, ros2-sqlite3: damaged small copies of ../shared/recordings (skipped without).
- manifest: manifest: damaged run manifests through what `topic`, `record`, `view` and `play` do with one.
- state:    state: damaged predictor state files through a restart.
- onnx:     onnx: damaged and mismatched step models (byte damage; metadata removed or given wrong values,
            via the `onnx` package) into `export.runtime.step_model.StepModel`, then one step (only
            ModelError may come out). Needs torch to export the tiny models; skipped without it.

The file and config targets are tests/test_fuzz.py's (`TARGETS`), which runs each for a few hundred cases.

`--cases N` runs N inputs per target: the run meets the bar when every target reached N with no crash and
no hang. `--seconds S` shares S equally among the targets; with both, a target stops at the first limit
reached; with neither, 600 s. Each case ends in an outcome (`dropped.bad_header`, `RecordingError`,
`read`, ...), counted per target and section. Any other exception or a broken invariant is a crash,
counted by signature (type, file:line, function); a case still running after 10 s is a hang. Exit status
1 on any crash or hang; `--allow-known` does not count the crashes of tests/test_node_fuzz.py KNOWN_BUGS
(reported, pinned by tests, fix pending). `--json` writes per-target cases, crashes, hangs, wall time,
outcomes and crash signatures with an example each.
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
from tests.test_fuzz import CASE_DEADLINE_S, TARGETS, Run, Target, _mutate_text, damage  # noqa: E402
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

PROGRESS_S = 60.0  # a line per target this often, for long runs written to a log


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


class KnownCrash(Exception):
    """A node crash that matches a KNOWN_BUGS signature (re-raised so that it is counted as a crash)."""

    def __init__(self, bug: str) -> None:
        super().__init__(bug)
        self.bug = bug


class Tally:
    """Counts of one target: cases, outcomes, crashes and hangs by signature (with one example each)."""

    def __init__(self, name: str, section: str) -> None:
        self.name = name
        self.section = section
        self.cases = 0
        self.hangs = 0
        self.wall_s = 0.0  # set-up included
        self.setup_s = 0.0
        self.outcomes: Counter[str] = Counter()
        self.crashes: Counter[str] = Counter()
        self.known: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.skipped = ""

    def run(self, case: Run, what: str) -> None:
        self.cases += 1
        try:
            with deadline(CASE_DEADLINE_S, what):
                self.outcomes[case()] += 1
        except Hang as exc:
            bug = known_bug(exc)
            if bug is not None:
                self.known[bug] += 1
            self.hangs += 1
            self.crash(f"hang: {self.name}" + (f" [known: {bug}]" if bug else ""), f"{what}: {exc}")
        except KnownCrash as exc:
            b = KNOWN_BUGS[exc.bug]
            self.known[exc.bug] += 1
            self.crash(f"{b.exc.__name__} in {b.file} {b.function} [known: {exc.bug}]", what)
        except Exception as exc:
            bug = known_bug(exc)
            if bug is not None:
                self.known[bug] += 1
            self.crash(signature(exc) + (f" [known: {bug}]" if bug else ""), f"{what}: {str(exc)[:300]}")

    def crash(self, sig: str, example: str) -> None:
        if sig not in self.crashes:  # at once: a long run's log shows a new bug before the run ends
            print(f"    new crash in {self.name}, case {self.cases}: {sig}\n        e.g. {example[:300]}", flush=True)
        self.crashes[sig] += 1
        self.examples.setdefault(sig, example)

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section, "cases": self.cases, "wall_s": round(self.wall_s, 1),
                "setup_s": round(self.setup_s, 1), "crashes": sum(self.crashes.values()) - self.hangs, "hangs": self.hangs,
                "outcomes": dict(self.outcomes.most_common()), "signatures": dict(self.crashes.most_common()),
                "examples": self.examples, "known_bugs": dict(self.known), "skipped": self.skipped}


# -- codec ---------------------------------------------------------------------------------------------------

class Codec(Target):
    name = "codec"

    def __init__(self, workdir: Path) -> None:
        self.schemas = sorted(SCHEMAS.values(), key=lambda c: c.SCHEMA)
        self.stamps = StampSource(max_jump_ns=2**62)

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        cls = rnd.choice(self.schemas)
        if rnd.random() < 0.3:
            msg = hostile_message(rnd, cls, self.stamps)

            def roundtrip() -> str:
                sent = [bytes(f) for f in encode(msg, publish_ns=7)]
                got, publish_ns = decode(sent, expect=type(msg))
                # compared as bytes: NaN != NaN in a Diagnostics dict would make `==` fail on a perfect copy
                if [bytes(f) for f in encode(got, publish_ns=publish_ns)] != sent:
                    raise AssertionError(f"{type(msg).SCHEMA} did not round-trip")
                return "roundtrip"
            return f"roundtrip {cls.SCHEMA}", roundtrip
        kind, frames = malformed(rnd, cls, self.stamps)

        def bad() -> str:
            try:
                decode(frames[1:], expect=cls)
            except DecodeError as exc:
                return f"{exc.kind}"
            return "decoded"
        return f"malformed {kind} {cls.SCHEMA}", bad


# -- launch files --------------------------------------------------------------------------------------------

_KEYS = ["name", "nodes", "run", "params", "inputs", "respawn", "required", "machine", "topic", "queue", "depth",
         "max", "backoff_s", "transport", "kind", "clock", "machines", "security", "keys", "agents", "rate_hz",
         "tracks", "sim", "printer", "x", "topics", "external", "models", "kinds", "pose0", "max_mb"]
_SCALARS = [None, True, False, 0, -1, 10**6, 1.5, float("nan"), float("inf"), "", "nodes.sim:TrafficSim",
            "nodes.printer:TrackPrinter", "nodes.poses:PosesToTracks", "nodes.evaluator:Evaluator",
            "nodes.predictor:Predictor", "sim/tracks", "block", "latest", "drop_oldest", "tcp", "ipc", "os:system",
            "a:b", "pipeline.runtime.runner:main", "../../x", "\x00", "pedestrian",
            "models/pretrained/vehicle_lstm.onnx"]


def _tree(rnd: random.Random, depth: int = 0) -> Any:
    r = rnd.random()
    if depth > 3 or r < 0.4:
        return rnd.choice(_SCALARS)
    if r < 0.55:
        return [_tree(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    return {rnd.choice(_KEYS): _tree(rnd, depth + 1) for _ in range(rnd.randint(0, 5))}


class Launch(Target):
    name = "launch"

    def __init__(self, workdir: Path) -> None:
        self.base = (REPO / "launch.yaml").read_text()
        self.path = workdir / "launch.yaml"

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        from pipeline.runtime.graph import load_graph

        if rnd.random() < 0.5:
            text = yaml.safe_dump({rnd.choice(_KEYS): _tree(rnd) for _ in range(rnd.randint(0, 5))})
            what = "random tree"
        else:
            text = _mutate_text(rnd, self.base)
            what = "mutated launch.yaml"
        self.path.write_text(text)

        def run() -> str:
            try:
                load_graph(self.path)
            except ConfigError as exc:
                if not str(exc).startswith(str(self.path)):
                    raise AssertionError(f"ConfigError does not name the file: {exc}") from None
                return "ConfigError"
            return "valid"
        return what, run


# -- node inputs ---------------------------------------------------------------------------------------------

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


class NodeInputs(Target):
    """One node's receive path: malformed and hostile valid messages on its inputs, timers every 50 cases."""

    def __init__(self, workdir: Path, key: str) -> None:
        self.cls = NODES[key]
        self.name = f"node.{self.cls.__name__}"
        d = Path(tempfile.mkdtemp(prefix="n-", dir=workdir))  # short: ipc paths stay under 100 chars
        self.h = Harness(self.cls, d, node_params(self.cls, d, _models))
        self.stamps = StampSource()
        self.n = 0

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        h, name = self.h, self.cls.__name__
        self.n += 1
        if self.n % 50 == 0:
            def tick() -> str:
                h.tick()
                return "timers fired"
            return f"{name} timers", tick
        inp = rnd.choice(sorted(self.cls.inputs))
        schema = self.cls.inputs[inp]
        if rnd.random() < 0.5:
            kind, frames = malformed(rnd, schema, self.stamps)
        else:
            kind, frames = "hostile", wire(hostile_message(rnd, schema, self.stamps))

        def run() -> str:
            out = h.deliver(inp, frames, timeout_s=CASE_DEADLINE_S)
            if out.startswith("known."):  # deliver tolerates these for the test suite; here they count
                raise KnownCrash(out[6:])
            return out
        return f"{name}.on_{inp} {kind}", run

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # the evaluator prints its table
            self.h.close()


# -- shared memory -------------------------------------------------------------------------------------------

class Shm(Target):
    """Damaged shared-memory message bodies, as ZeroMQ brings them and as a bell finds them in a slot's
    record: each is delivered (arrays inside the slot, checked by `decode`) or dropped and counted, never
    an exception."""

    name = "shm"

    def __init__(self, workdir: Path) -> None:
        import zmq

        from pipeline.transport.publisher import Publisher
        from pipeline.transport.subscriber import Subscriber
        from pipeline.wire.messages import Image
        from tests.conftest import connected, take, wait_for

        self.ctx = zmq.Context()
        d = Path(tempfile.mkdtemp(prefix="s-", dir=workdir))
        endpoint = f"ipc://{d}/cam.sock"
        self.pub = Publisher(self.ctx, "cam/image", endpoint, shm="on")
        self.sub = Subscriber(self.ctx, "cam/image", endpoint, "drop_oldest", depth=64, shm="on", bell=True)
        writer = self.pub._writer
        try:
            assert writer is not None and self.sub.reader is not None, "shm is off"
            connected(self.pub, self.sub)

            def belled() -> bool:  # until the publisher has the subscriber's bell, so records are stored
                self.pub.send(encode(Image(data=np.zeros((64, 1024, 1), np.uint8))), lambda: False)
                take(self.sub)
                return bool(writer.bells.fds)
            wait_for(belled, 10, "the bell handed in")
        except BaseException:
            self.close()
            raise
        self.n = 0

    def close(self) -> None:
        self.sub.close()
        self.pub.close()
        self.ctx.destroy(linger=0)

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        from pipeline.transport.shm.segment import BODY, META_BYTES, META_LEN, record_start
        from pipeline.wire.messages import Image

        sub, writer, reader = self.sub, self.pub._writer, self.sub.reader
        assert writer is not None and reader is not None
        self.n += 1
        n = self.n
        frames = encode(Image(data=np.full((rnd.choice((64, 80)), 1024, 1), n & 0xFF, np.uint8), seq=n))
        bodies: list[bytes] = []

        def capture(desc: bytes) -> None:
            bodies.append(BODY.pack(writer.seq, len(desc)) + desc + frames[0])  # as Publisher._send_shm sends it
        if not writer.write(frames[1:], capture, header=frames[0]):
            raise RuntimeError(f"fuzz harness: every slot held ({len(reader.leases)} leases)")
        op, damaged = damage(rnd, bodies[0]) if rnd.random() < 0.9 else ("intact", bodies[0])
        where = rnd.choice(("zeromq", "record"))
        length_ok = rnd.random() < 0.8
        length = rnd.randrange(1 << 32)

        def run() -> str:
            before = (sub.dropped, reader.bad, reader.overruns)
            if where == "zeromq":
                sub._queue.append(damaged)
                sub._resolve(sub._queue, 1)
            else:
                start = record_start((writer.next_slot - 1) % writer.slots)
                body = damaged[:META_BYTES - META_LEN.size]
                META_LEN.pack_into(writer.seg.mm, start, len(body) if length_ok else length)  # type: ignore[union-attr]
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
        return f"shm {where} body, {op}", run


# -- onnx ----------------------------------------------------------------------------------------------------

class Onnx(Target):
    name = "onnx"

    def __init__(self, workdir: Path) -> None:
        import onnxruntime

        onnxruntime.set_default_logger_severity(4)  # its C++ log of every damaged graph that fails to run: fatal only
        self.onnx: Any = None
        with contextlib.suppress(ImportError):  # without it, byte damage only
            import onnx

            self.onnx = onnx
        self.sources = {k: Path(v).read_bytes() for k, v in _models().items()}
        self.protos = {k: self.onnx.load_from_string(v) for k, v in self.sources.items()} if self.onnx else {}
        self.path = workdir / "bad.onnx"

    def case(self, rnd: random.Random) -> tuple[str, Run]:
        from export.runtime.step_model import ModelError, StepModel

        kind = rnd.choice(sorted(self.sources))
        if self.onnx is not None and rnd.random() < 0.5:
            proto = self.onnx.ModelProto()
            proto.CopyFrom(self.protos[kind])
            props = {p.key: p.value for p in proto.metadata_props}
            key = rnd.choice(sorted(props))
            if rnd.random() < 0.3:
                props.pop(key)
                what = f"metadata {key} removed"
            else:
                other = self.protos[rnd.choice(sorted(self.protos))]
                pool = ["", "0", "-1", "1e9", "nan", "lstm", "gru", "{}", "[]", "null", '{"scale": 0}',
                        *(p.value for p in other.metadata_props)]
                props[key] = rnd.choice(pool)
                what = f"metadata {key}={props[key][:20]!r}"
            del proto.metadata_props[:]
            self.onnx.helper.set_model_props(proto, props)
            self.path.write_bytes(proto.SerializeToString())
        else:
            op, data = damage(rnd, self.sources[kind])
            self.path.write_bytes(data)
            what = f"bytes {op}"

        def run() -> str:
            # onnxruntime prints an "EP Error ... retrying" banner for some damaged models: not ours to show
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                try:
                    m = StepModel(self.path)
                    x = np.zeros((3, m.meta.input_dim), np.float32)
                    m.step(x, m.zero_state(3))
                except ModelError:
                    return "ModelError"
            return "loaded and stepped"
        return f"{kind} {what}", run


# -- main ----------------------------------------------------------------------------------------------------

def catalogue() -> dict[str, tuple[str, Callable[[Path], Target]]]:
    """Every target: name -> (section, factory), in run order."""
    t: dict[str, tuple[str, Callable[[Path], Target]]] = {"codec": ("codec", Codec), "launch": ("launch", Launch),
                                                           "set": ("launch", TARGETS["set"])}
    for key in sorted(NODES):
        t[f"node.{NODES[key].__name__}"] = ("nodes", lambda d, key=key: NodeInputs(d, key))
    t["shm"] = ("shm", Shm)
    for name in ("mcap", "record", "salvage", "export", "lockstep"):
        t[name] = ("mcap", TARGETS[name])
    for name in ("ros1", "ros2-mcap", "ros2-sqlite3"):
        t[name] = ("bag", TARGETS[name])
    t["manifest"] = ("manifest", TARGETS["manifest"])
    t["state"] = ("state", TARGETS["state"])
    t["onnx"] = ("onnx", Onnx)
    return t


def run_target(tally: Tally, target: Target, rnd: random.Random, cases: int | None, until: float | None) -> None:
    start = last = time.monotonic()
    while (cases is None or tally.cases < cases) and (until is None or time.monotonic() < until):
        try:
            what, run = target.case(rnd)
        except Exception as exc:  # the harness itself failed to make an input: stop this target, count it
            tally.crash(f"harness: {signature(exc)}", str(exc)[:300])
            return
        tally.run(run, what)
        if time.monotonic() - last > PROGRESS_S:
            last = time.monotonic()
            print(f"    {tally.name}: {tally.cases} cases, {sum(tally.crashes.values())} crashes "
                  f"({(last - start) / tally.cases * 1000:.2f} ms/case)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=None, help="inputs per target; the bar: every target reaches it")
    ap.add_argument("--seconds", type=float, default=None,
                    help="total run time, shared equally by the targets (default 600 without --cases)")
    ap.add_argument("--json", default=None, help="write the counts here")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time-based, printed)")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="sections or targets to run")
    ap.add_argument("--allow-known", action="store_true", help="crashes of KNOWN_BUGS do not fail the run")
    args = ap.parse_args(argv)
    every = catalogue()
    sections = {s for s, _ in every.values()}
    chosen = [n for n, (s, _) in every.items() if not args.only or n in args.only or s in args.only]
    unknown = set(args.only or ()) - set(every) - sections
    if unknown:
        ap.error(f"unknown --only {', '.join(sorted(unknown))}; sections: {', '.join(sorted(sections))}; "
                 f"targets: {', '.join(every)}")
    seconds = args.seconds if args.seconds is not None or args.cases is not None else 600.0
    seed = args.seed if args.seed is not None else int(time.time())
    limits = " and ".join(x for x in (f"{args.cases} cases per target" if args.cases else "",
                                      f"{seconds:g} s" if seconds else "") if x)
    print(f"fuzz: {limits} over {', '.join(chosen)}; seed {seed}", flush=True)
    import logging

    logging.disable(logging.WARNING)  # bad messages are logged once per kind per node: noise here
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy on NaN/inf inputs: expected here
    tallies: dict[str, Tally] = {}
    share = seconds / len(chosen) if seconds else None
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dc-fz-", dir="/tmp") as tmp:
        for name in chosen:
            section, make = every[name]
            tally = tallies[name] = Tally(name, section)
            t0 = time.monotonic()
            d = Path(tempfile.mkdtemp(prefix="t-", dir=tmp))
            try:
                target = make(d)
                tally.setup_s = time.monotonic() - t0
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # no recordings or no torch here: pytest.skip is a BaseException
                tally.skipped = f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                try:
                    run_target(tally, target, random.Random(f"{seed}:{name}"), args.cases,
                               None if share is None else t0 + share)
                finally:
                    try:
                        target.close()
                    except Exception as exc:
                        tally.crash(f"close: {signature(exc)}", str(exc)[:300])
            tally.wall_s = time.monotonic() - t0
            print(f"  {name:<20} {tally.cases:>8} cases in {tally.wall_s:7.1f} s, "
                  f"{sum(tally.crashes.values()) - tally.hangs} crashes, {tally.hangs} hangs"
                  + (f" (skipped: {tally.skipped})" if tally.skipped else ""), flush=True)
            if args.json:  # after every target: a long run stopped half-way keeps what it measured
                write_json(Path(args.json), args.cases, tallies, seed, seconds, time.monotonic() - t_all)
    return report(args, tallies, seed, seconds, time.monotonic() - t_all)


def _bar(cases: int | None, tallies: dict[str, Tally]) -> tuple[bool, list[str], int, int, int]:
    """(bar met, targets short of `cases`, crashes, hangs, crashes of known bugs)."""
    hangs = sum(t.hangs for t in tallies.values())
    crashes = sum(sum(t.crashes.values()) for t in tallies.values()) - hangs
    known = sum(sum(t.known.values()) for t in tallies.values())
    short = [t.name for t in tallies.values() if cases is None or t.cases < cases]
    return cases is not None and not short and not crashes and not hangs, short, crashes, hangs, known


def write_json(path: Path, cases: int | None, tallies: dict[str, Tally], seed: int, seconds: float | None,
               wall_s: float) -> None:
    met, short, crashes, hangs, known = _bar(cases, tallies)
    sections: dict[str, dict[str, Any]] = {}
    for t in tallies.values():
        s = sections.setdefault(t.section, {"targets": [], "cases": 0, "crashes": 0, "hangs": 0,
                                            "outcomes": Counter()})
        s["targets"].append(t.name)
        s["cases"] += t.cases
        s["crashes"] += sum(t.crashes.values()) - t.hangs
        s["hangs"] += t.hangs
        s["outcomes"].update(t.outcomes)
    for s in sections.values():
        s["outcomes"] = dict(s["outcomes"].most_common())
    path.write_text(json.dumps({
        "seed": seed, "cases_per_target": cases, "seconds": seconds, "wall_s": round(wall_s, 1),
        "bar": {"cases_per_target": cases, "met": met, "short": short},
        "cases": sum(t.cases for t in tallies.values()), "crashes": crashes, "hangs": hangs,
        "known_bug_crashes": known, "known_bugs": {k: v.test for k, v in KNOWN_BUGS.items()},
        "targets": {n: t.to_json() for n, t in tallies.items()}, "sections": sections}, indent=1))


def report(args: argparse.Namespace, tallies: dict[str, Tally], seed: int, seconds: float | None,
           wall_s: float) -> int:
    met, short, crashes, hangs, known = _bar(args.cases, tallies)
    total = sum(t.cases for t in tallies.values())
    print(f"\n{'target':<20}{'section':<10}{'cases':>9}{'crashes':>9}{'hangs':>7}{'wall s':>9}{'ms/case':>9}"
          "  outcomes (top 4)")
    for t in tallies.values():
        top = ", ".join(f"{k} {v}" for k, v in t.outcomes.most_common(4)) or t.skipped
        ms = (t.wall_s - t.setup_s) / t.cases * 1000 if t.cases else 0.0
        print(f"{t.name:<20}{t.section:<10}{t.cases:>9}{sum(t.crashes.values()) - t.hangs:>9}{t.hangs:>7}"
              f"{t.wall_s:>9.1f}{ms:>9.2f}  {top[:110]}")
    print(f"{'total':<30}{total:>9}{crashes:>9}{hangs:>7}{wall_s:>9.1f}")
    for t in tallies.values():
        for sig, n in t.crashes.most_common():
            print(f"CRASH {t.name}: {n} x {sig}\n    e.g. {t.examples[sig]}")
    if args.cases is not None:
        print(f"bar ({args.cases} cases per target, 0 crashes, 0 hangs): {'met' if met else 'NOT met'}"
              + (f"; short of {args.cases}: {', '.join(short)}" if short else ""))
    if args.json:
        write_json(Path(args.json), args.cases, tallies, seed, seconds, wall_s)
    failing = crashes + hangs - (known if args.allow_known else 0)
    return 1 if failing else 0


if __name__ == "__main__":
    if "DRIVECAST_RUN_DIR" not in os.environ:  # players write run manifests: keep them out of the user's runs
        os.environ["DRIVECAST_RUN_DIR"] = tempfile.mkdtemp(prefix="dc-fzr-", dir="/tmp")
        atexit.register(shutil.rmtree, os.environ["DRIVECAST_RUN_DIR"], True)
    sys.exit(main())
