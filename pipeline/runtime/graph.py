"""Launch files: parse, validate and resolve a node graph before any process starts.

Every problem is reported as one `ConfigError` naming the file and the key, e.g.
`launch.yaml: nodes.predictor.params.ttl_s: expected float, got str`. Checked: YAML syntax, unknown
or mistyped keys, node classes that cannot be imported, params (unknown key, wrong type), inputs
that name no declared input, topics no node publishes, schema mismatches between an output and an
input, and cycles in which every edge is lossless (`block`), which could deadlock. Limits (MAX_*) bound
what a file can cost before its content is used; the size walk stops at the limit (YAML alias bombs).

Topics are node outputs, named `node/output`. Each node also has the output `diagnostics`.

An input may also name an *external* topic, one that no node of the graph publishes and that
`drivecast play` feeds into the running graph: a topic of a node removed with `--without NODE`
(`load_graph(..., without=...)`), or one the file marks `topics: {TOPIC: {external: true}}`. Its
schema is what its subscribers' inputs expect (they must agree). Any other topic that no node
publishes stays an error: a typo must not become a silent input that never receives anything.
A graph with external topics and no `clock:` follows the replayed time on the external topic
`clock`, which `drivecast play` publishes.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from pipeline.errors import ConfigError
from pipeline.runtime.config import (
    MAX_PARAMS_BYTES,
    YAML_VALUE_ERRORS,
    check_finite,
    convert,
    larger_than,
    parse_set,
    with_overrides,
)
from pipeline.runtime.node import Node, NodeParams
from pipeline.transport.endpoints import QUEUE_BYTES
from pipeline.wire.messages import Clock, Message

__all__ = ["EXTERNAL_CLOCK", "Graph", "InputSpec", "NodeSpec", "load_graph", "parse_set"]

Policy = Literal["latest", "drop_oldest", "block"]
EXTERNAL_CLOCK = "clock"  # the clock of a graph with external topics and no `clock:` of its own
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
MAX_FILE_BYTES = 1 << 20  # a launch file of 256 nodes with modest params is well under 100 kB
MAX_NODES = 256  # one process each
MAX_EXPANDED_BYTES = 8 * MAX_FILE_BYTES  # the whole file, estimated as params are, aliases expanded


class _Input(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    queue: str = "drop_oldest"
    depth: int = 10
    max_mb: float = QUEUE_BYTES / 2**20  # what ZeroMQ may queue for this input (see pipeline/transport/endpoints.py)


class _Respawn(msgspec.Struct, forbid_unknown_fields=True):
    max: int = 5
    backoff_s: float = 0.5


class _NodeEntry(msgspec.Struct, forbid_unknown_fields=True):
    run: str
    params: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    respawn: bool | _Respawn = False
    required: bool = False
    machine: str = ""


class _Transport(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    kind: Literal["ipc", "tcp"] = "ipc"
    host: str = "127.0.0.1"
    base_port: int = 0


class _Machine(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    host: str = "127.0.0.1"  # the address this machine's publishers bind and others connect to
    base_port: int = 7400    # its topics use consecutive ports from here (two per topic)


class _Security(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    keys: str  # directory of CURVE keys (`drivecast keys`), relative to the launch file


class _TopicOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`topics: {TOPIC: {...}}`: how one topic travels (see pipeline/transport/publisher.py)."""

    shm: bool | Literal["auto"] = "auto"  # auto: shared memory for subscribers on this machine (ipc)
    shm_threshold: int = 65536  # array bytes per message from which shared memory is used
    shm_slots: int = 0  # 0: the launcher picks max(4, deepest local drop_oldest depth + 2)
    external: bool = False  # no node publishes it: `drivecast play` feeds it into the running graph


class _LaunchFile(msgspec.Struct, forbid_unknown_fields=True):
    nodes: dict[str, Any]
    name: str = "graph"
    clock: str = ""
    transport: _Transport = _Transport()
    machines: dict[str, _Machine] = {}
    security: _Security | None = None
    insecure: bool = False  # allow plaintext tcp (no `security:`): any local user can reach a loopback port
    topics: dict[str, Any] = {}


@dataclass(frozen=True)
class InputSpec:
    topic: str
    queue: Policy
    depth: int
    max_mb: float = QUEUE_BYTES / 2**20


@dataclass
class NodeSpec:
    name: str
    run: str
    cls: type[Node]
    params: NodeParams
    raw_params: dict[str, Any]
    inputs: dict[str, InputSpec]
    respawn_max: int
    respawn_backoff_s: float
    required: bool
    machine: str


@dataclass
class Graph:
    """A validated graph: nodes in file order, and for each topic its schema and publisher."""

    name: str
    path: str
    nodes: dict[str, NodeSpec]
    topics: dict[str, type[Message]]
    clock: str = ""
    transport: str = "ipc"
    tcp_host: str = "127.0.0.1"
    tcp_base_port: int = 0
    subscribers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    machines: dict[str, tuple[str, int]] = field(default_factory=dict)
    keys_dir: str = ""
    run_keys: bool = False  # tcp on one machine without `security:`: the launcher makes keys for this run
    topic_options: dict[str, Any] = field(default_factory=dict)  # topic -> _TopicOptions
    # Topics the nodes subscribe to that no node publishes (see the module), with their schema.
    external: dict[str, type[Message]] = field(default_factory=dict)
    removed: tuple[str, ...] = ()  # the nodes `--without` took out

    def lossless_subscribers(self, topic: str) -> int:
        return sum(1 for node, inp in self.subscribers.get(topic, [])
                   if self.nodes[node].inputs[inp].queue == "block")


def resolve_class(run: str) -> type[Node]:
    module_name, colon, attr = run.partition(":")
    if not colon or not module_name or not attr:
        raise ValueError(f"expected 'module:Class', got {run!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise ValueError(f"{module_name!r} has no Node class {attr!r}")
    return cls


def load_graph(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None,
               without: list[str] | tuple[str, ...] = ()) -> Graph:
    """Read and validate a launch file; raise ConfigError naming the file and key on any problem.
    `without`: nodes to leave out (`drivecast launch --without`); the topics they published become
    external, fed by `drivecast play`."""
    path = Path(path)
    where = str(path)
    try:
        with path.open("rb") as fh:  # bounded read: the size a stat reports does not bind a pipe or /dev/zero
            data = fh.read(MAX_FILE_BYTES + 1)
        text = data.decode()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read launch file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: launch file larger than the limit of {MAX_FILE_BYTES} bytes (1 MiB)")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: {pos}invalid YAML: {problem}") from None
    except YAML_VALUE_ERRORS as exc:
        raise ConfigError(f"{where}: invalid YAML: a tagged value it cannot take ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'nodes' key, got {type(raw).__name__}")
    for name, entry in (raw["nodes"] if isinstance(raw.get("nodes"), dict) else {}).items():
        if isinstance(entry, dict) and larger_than(entry.get("params"), MAX_PARAMS_BYTES):
            raise ConfigError(f"{where}: nodes.{name}.params: larger than the limit of {MAX_PARAMS_BYTES} bytes per node")
    if larger_than(raw, MAX_EXPANDED_BYTES):
        raise ConfigError(f"{where}: larger than the limit of {MAX_EXPANDED_BYTES} bytes with its aliases expanded")
    check_finite(raw, where, "")  # once, here: JSON carries params to each node process and cannot hold them
    spec = convert(raw, _LaunchFile, where, "")
    if not 1 <= len(spec.nodes) <= MAX_NODES:
        raise ConfigError(f"{where}: nodes: " + (f"{len(spec.nodes)} nodes, more than the limit of {MAX_NODES}"
                                                  if spec.nodes else "expected at least one node"))
    if not _NAME.match(spec.name):  # it names the run directory: no '/' or '..'
        raise ConfigError(f"{where}: name: letters, digits, '_' and '-' only, got {spec.name!r}")

    overrides = overrides or {}
    for node in overrides:
        if node not in spec.nodes:
            raise ConfigError(f"--set {node}.*: no node {node!r} in {where} (nodes: {', '.join(spec.nodes)})")
        if node in without:
            raise ConfigError(f"--set {node}.*: node {node!r} is left out by --without {node}")
    for node in without:
        if node not in spec.nodes:
            raise ConfigError(f"--without {node}: no node {node!r} in {where} (nodes: {', '.join(spec.nodes)})")
    if set(spec.nodes) <= set(without):
        raise ConfigError(f"--without: leaves no node of {where} to run")
    marked = {t for t, opt in spec.topics.items() if isinstance(opt, dict) and opt.get("external") is True}

    nodes: dict[str, NodeSpec] = {}
    topics: dict[str, type[Message]] = {}
    removed_outputs: dict[str, dict[str, type[Message]]] = {}
    for name, raw_entry in spec.nodes.items():
        key = f"nodes.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: {key}: node names are letters, digits, '_' and '-'")
        if name in without:
            # Its outputs, if its code is here, catch a misspelt topic; a recording stands in for it,
            # maybe on a machine without its code, so an import failure is no error.
            with contextlib.suppress(ValueError):
                removed_outputs[name] = resolve_class(convert(raw_entry, _NodeEntry, where, key).run).all_outputs()
            continue
        entry = convert(raw_entry, _NodeEntry, where, key)
        try:
            cls = resolve_class(entry.run)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}.run: {exc}") from None
        raw_params = with_overrides(entry.params, overrides.get(name, {}), name)
        # errors about a param name the --set that gave it
        given = {k.split(".")[0]: f"--set {name}.{k}={v}" for k, v in overrides.get(name, {}).items()}
        for k, v in overrides.get(name, {}).items():
            check_finite(v, f"--set {name}.{k}={v}", f"{key}.params.{k}")
        params = convert(raw_params, cls.Params, where, f"{key}.params", strict=False, origin=given)
        inputs: dict[str, InputSpec] = {}
        for inp, value in entry.inputs.items():
            if inp not in cls.inputs:
                raise ConfigError(f"{where}: {key}.inputs.{inp}: {entry.run} has no input {inp!r} "
                                  f"(inputs: {', '.join(cls.inputs) or 'none'})")
            ikey = f"{key}.inputs.{inp}"
            i = _Input(value) if isinstance(value, str) else convert(value, _Input, where, ikey)
            if i.queue not in ("latest", "drop_oldest", "block"):
                raise ConfigError(f"{where}: {ikey}.queue: expected latest, drop_oldest or block, got {i.queue!r}")
            if i.depth < 1:
                raise ConfigError(f"{where}: {key}.inputs.{inp}.depth: expected >= 1, got {i.depth}")
            if not 1 <= i.max_mb <= 65536:
                raise ConfigError(f"{where}: {ikey}.max_mb: expected 1 to 65536 (MiB), got {i.max_mb}")
            inputs[inp] = InputSpec(i.topic, i.queue, i.depth, i.max_mb)  # type: ignore[arg-type]
        if entry.respawn is True:
            respawn_max, backoff = _Respawn().max, _Respawn().backoff_s
        elif entry.respawn is False:
            respawn_max, backoff = 0, 0.0
        else:
            respawn_max, backoff = entry.respawn.max, entry.respawn.backoff_s
        nodes[name] = NodeSpec(name, entry.run, cls, params, raw_params, inputs, respawn_max, backoff,
                               entry.required, entry.machine)
        for out, schema in cls.all_outputs().items():
            topics[f"{name}/{out}"] = schema

    subscribers: dict[str, list[tuple[str, str]]] = {}
    external: dict[str, type[Message]] = {}
    first_key: dict[str, str] = {}  # external topic -> the input that set its schema
    for name, nspec in nodes.items():
        for inp, ispec in nspec.inputs.items():
            key = f"nodes.{name}.inputs.{inp}"
            want = nspec.cls.inputs[inp]
            publisher, _, output = ispec.topic.partition("/")
            if ispec.topic not in topics and (ispec.topic in marked or publisher in without):
                outs = removed_outputs.get(publisher)
                if ispec.topic not in marked and outs is not None and output not in outs:
                    raise ConfigError(f"{where}: {key}: unknown topic {ispec.topic!r} (node {publisher!r}, left out "
                                      f"by --without, has outputs {', '.join(outs)})")
                known = outs is not None and output in outs
                prev = external.setdefault(ispec.topic, outs[output] if outs is not None and known else want)
                first_key.setdefault(ispec.topic, f"nodes.{publisher}.run" if known else key)
                if prev is not want:
                    raise ConfigError(f"{where}: {key}: external topic {ispec.topic!r} carries {prev.SCHEMA} "
                                      f"(per {first_key[ispec.topic]}), input {inp!r} expects {want.SCHEMA}")
                subscribers.setdefault(ispec.topic, []).append((name, inp))
                continue
            if ispec.topic not in topics:
                raise ConfigError(f"{where}: {key}: unknown topic {ispec.topic!r} "
                                  f"(topics: {', '.join(sorted(topics))}; a topic fed from outside by `drivecast "
                                  f"play` is marked topics: {{{ispec.topic}: {{external: true}}}})")
            got = topics[ispec.topic]
            if want is not got:
                raise ConfigError(f"{where}: {key}: topic {ispec.topic!r} carries {got.SCHEMA}, "
                                  f"input {inp!r} expects {want.SCHEMA}")
            subscribers.setdefault(ispec.topic, []).append((name, inp))
    machines = {m: (v.host, v.base_port) for m, v in spec.machines.items()}
    for name, nspec in nodes.items():
        if machines and nspec.machine not in machines:
            raise ConfigError(f"{where}: nodes.{name}.machine: expected one of {', '.join(machines)}, "
                              f"got {nspec.machine!r}")
        if nspec.machine and not machines:
            raise ConfigError(f"{where}: nodes.{name}.machine: no machines: section names {nspec.machine!r}")
    if machines and spec.security is None and not spec.insecure:
        # Plaintext tcp is open to anyone who can reach the port, every local user included (loopback).
        m, (host, _) = next(iter(machines.items()))
        raise ConfigError(f"{where}: machines.{m}.host: {host}: plaintext tcp would let "
                          + ("any local user" if _loopback(host) else "anyone on the network")
                          + " connect; add security: {keys: DIR} (CURVE), or insecure: true to send plaintext")
    keys_dir = ""
    if spec.security is not None:
        if spec.transport.kind != "tcp" and not machines:
            raise ConfigError(f"{where}: security: CURVE needs tcp transport (transport: {{kind: tcp}}) or machines:")
        keys_dir = str((path.parent / spec.security.keys).resolve())
        for m in list(machines) or [""]:
            for suffix in (".key", ".key_secret"):
                f = Path(keys_dir) / f"{m or 'default'}{suffix}"
                if suffix == ".key" and not f.exists():
                    raise ConfigError(f"{where}: security.keys: no public key {f} for machine {m or 'default'!r} "
                                      f"(make it with `drivecast keys {spec.security.keys} {m or 'default'}`)")
    clock = spec.clock
    if clock and clock not in topics:
        if clock not in marked and clock.split("/", 1)[0] not in without:
            raise ConfigError(f"{where}: clock: unknown topic {clock!r}")
        external[clock] = Clock
    elif external and not clock:
        # Fed by a recording, the graph lives in the recording's time (its stamps are in the past):
        # `drivecast play` publishes it, as `ros2 bag play --clock` does for `use_sim_time`.
        clock = EXTERNAL_CLOCK
        external[clock] = Clock
    _check_block_cycles(where, nodes)
    topic_options: dict[str, _TopicOptions] = {}
    for t, raw_opt in spec.topics.items():
        opt = convert(raw_opt, _TopicOptions, where, f"topics.{t}")
        if opt.external and t in topics:
            raise ConfigError(f"{where}: topics.{t}.external: node {t.split('/', 1)[0]!r} publishes {t!r}; "
                              "an external topic is one no node publishes")
        if opt.external and t not in external:
            raise ConfigError(f"{where}: topics.{t}.external: no input subscribes to {t!r}")
        if t not in topics and t not in external:
            raise ConfigError(f"{where}: topics.{t}: unknown topic {t!r} (topics: {', '.join(sorted(topics))})")
        topic_options[t] = opt
        if opt.shm_slots and not 2 <= opt.shm_slots <= 62:
            raise ConfigError(f"{where}: topics.{t}.shm_slots: expected 2 to 62, got {opt.shm_slots}")
        if opt.shm_threshold < 0:
            raise ConfigError(f"{where}: topics.{t}.shm_threshold: expected >= 0, got {opt.shm_threshold}")
    transport = "tcp" if machines else spec.transport.kind
    run_keys = transport == "tcp" and not machines and not keys_dir and not spec.insecure
    return Graph(spec.name, where, nodes, topics, clock, transport, spec.transport.host,
                 spec.transport.base_port, subscribers, machines, keys_dir, run_keys, topic_options, external,
                 tuple(without))


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _check_block_cycles(where: str, nodes: dict[str, NodeSpec]) -> None:
    """A cycle of lossless edges can fill every queue and wait forever: refuse it."""
    edges: dict[str, list[str]] = {n: [] for n in nodes}
    for name, node in nodes.items():
        for ispec in node.inputs.values():
            publisher = ispec.topic.split("/", 1)[0]
            if ispec.queue == "block" and publisher in edges:  # an external topic's publisher is outside
                edges[publisher].append(name)
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in edges[n]:
            if state.get(m) == 1:
                cycle = " -> ".join(path[path.index(m):] + [m])
                raise ConfigError(f"{where}: nodes: cycle of 'block' inputs {cycle}; give one input "
                                  "queue: latest or drop_oldest")
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in nodes:
        if n not in state:
            visit(n, [n])
