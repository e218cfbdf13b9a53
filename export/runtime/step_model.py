"""Run an exported drivecast step model on onnxruntime, without torch.

`export.runtime` is the only part of `export/` that nodes import, so this imports numpy and onnxruntime
and nothing else: a graph running on an embedded box has neither torch nor onnx installed.

A model file is the step graph written by `drivecast export` (export/torch_export/onnx_export.py):

    x[B,F], h[L,B,H], c[L,B,H]  ->  pred[B,T,2], h_out[L,B,H], c_out[L,B,H]      (GRU: no c / c_out)

or, for a model of K > 1 futures (metadata `modes`, format drivecast-step/2, which a reader of /1 refuses
by name rather than misreading), `pred[B,K,T,2], logit[B,K]` before the state. `step` gives the most
probable future of either, `step_modes` every future with its probability.

plus its description in the ONNX metadata_props (`ModelMeta`). `StepModel` checks both at load, so a
node fails at setup with a message naming the file, the key and what was expected, never at the first
Tracks message with an onnxruntime shape error. `StepModel.inspect` makes the same checks without
optimising or running the graph, cheaply enough that a launch file naming a bad model is refused before
any process starts. Declared dimensions have plausible bounds (`LIMITS`, `DT_S_RANGE`), checked before
anything is sized by them: a file that claims hidden=10**9 must not make the warm-up allocate gigabytes.

Session settings, each chosen on measurement (figures in bench/README.md):
- one intra-op thread, one inter-op thread, sequential execution: at batch 1 a step is ~10 tiny kernels,
  and at batch 64 the LSTM's GEMM is too small to split well, so more threads are no faster, and a node
  should not take the whole box;
- full graph optimisation: folds the exporter's Shape/Gather/Constant plumbing;
- plain `InferenceSession.run` rather than IO binding: on the CPU provider binding is no faster, and
  `run` returns fresh arrays, so the caller owns them without an extra copy. IO binding pays off when the
  state can stay on a GPU, which the numpy `step` API cannot offer. Memory-pattern and arena options made
  no difference either, with a batch that changes every call as in a live graph;
- a warm-up at load: the first run of a shape allocates and plans memory, which must not land on the
  first message of a live graph.

GPU providers (TensorRT, CUDA) are chosen when this onnxruntime build has them; that path is untested
here (no GPU on the development machine), and TensorRT would want engine caching and batch profiles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = [
    "DEFAULT_PROVIDERS",
    "DT_S_RANGE",
    "FORMAT",
    "FORMAT_MODES",
    "LIMITS",
    "ModelError",
    "ModelMeta",
    "StepModel",
    "default_providers",
]

FORMAT = "drivecast-step/1"
"""Value of the `format` metadata key; bumped when the graph's inputs/outputs or the keys change."""
FORMAT_MODES = "drivecast-step/2"
"""The `format` of a model of K > 1 futures: its graph has the `logit` output and `pred` a mode axis."""

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_CELLS = ("lstm", "gru")


class ModelError(ValueError):
    """A model file that cannot be used: missing, corrupt, undescribed, or not the expected graph."""


# --------------------------------------------------------------------------------------------------
# Metadata


@dataclass(frozen=True)
class ModelMeta:
    """What a node needs to know about a step model, stored as ONNX metadata_props.

    Each field is one metadata key. Scalars are stored as their decimal text, dicts as JSON; `dt_s`
    is a float written with `repr` so it round-trips exactly.
    """

    kind: str  # the model family, e.g. "trajectory"
    cell: str  # "lstm" | "gru"
    layers: int  # L in h[L,B,H]
    hidden: int  # H
    input_dim: int  # F in x[B,F]
    horizon: int  # T in pred[B,T,2]: predicted steps
    obs_len: int  # observed steps of the windowed protocol the model was validated on
    dt_s: float  # sample period the model steps at, seconds
    features: dict[str, Any]  # the feature builder's spec (export/runtime/features.py), incl. normalisation
    training_data: dict[str, Any]  # datasets / splits / scenes it was trained on
    metrics: dict[str, Any]  # validation metrics (ADE/FDE, constant-velocity baseline)
    version: str  # drivecast version that exported it
    content_hash: str  # "sha256:<hex>" of the graph without metadata (see onnx_export.graph_hash)
    agent_type: str | None = None  # "pedestrian", "vehicle", ... when the model is for one type
    precision: str = "fp32"  # "fp32" | "int8" | "fp16"
    exporter: str = ""  # which torch.onnx exporter produced the graph
    weights_hash: str = ""  # "sha256:<hex>" of the torch state_dict it was exported from
    config: dict[str, Any] = field(default_factory=dict)  # the full training ModelConfig
    modes: int = 1  # K futures per agent (K > 1: pred[B,K,T,2] and logit[B,K])

    def __getitem__(self, key: str) -> Any:
        """Mapping-style read, so code written against a dict of these keys (models.evaluate) works too."""
        if key not in _FIELD_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _FIELD_NAMES else default

    def to_props(self) -> dict[str, str]:
        """The metadata_props to write into a model file (key -> text)."""
        props = {"format": FORMAT if self.modes == 1 else FORMAT_MODES}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "" or (f.name == "modes" and value == 1):  # unset optional: left out
                continue
            if isinstance(value, dict):
                props[f.name] = json.dumps(value, sort_keys=True, default=_json_default)
            elif isinstance(value, float):
                props[f.name] = repr(value)
            else:
                props[f.name] = str(value)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMeta:
        """Parse and check metadata_props; `source` (the file name) prefixes every error."""
        if "format" not in props:
            found = ", ".join(sorted(props)) or "none"
            raise ModelError(
                f"{source}: no drivecast metadata (metadata_props key 'format' missing; keys found: "
                f"{found}); export the model with `drivecast export`"
            )
        if props["format"] not in (FORMAT, FORMAT_MODES):
            raise ModelError(
                f"{source}: metadata key 'format': expected {FORMAT!r} or {FORMAT_MODES!r}, found "
                f"{props['format']!r}"
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in props:
                if f.default is not MISSING or f.default_factory is not MISSING:
                    continue
                raise ModelError(f"{source}: metadata key {f.name!r} missing (expected {_EXPECT[f.name]})")
            values[f.name] = _parse(source, f.name, props[f.name])
        if (values.get("modes", 1) > 1) != (props["format"] == FORMAT_MODES):
            raise ModelError(f"{source}: metadata key 'modes' is {values.get('modes', 1)} with format "
                             f"{props['format']!r}: expected {FORMAT_MODES!r} exactly when modes > 1")
        return cls(**values)

    def check_limits(self, source: str = "model") -> None:
        """ModelError unless each declared dimension is within `LIMITS` and dt_s within `DT_S_RANGE`.

        Kept out of `from_props`, which accepts any positive size so that a description round-trips: the
        bounds are the loader's, on what it will size arrays by before the graph has run."""
        for key, top in LIMITS.items():
            if getattr(self, key) > top:
                raise ModelError(f"{source}: metadata key {key!r}: expected a positive int <= {top}, "
                                 f"found '{getattr(self, key)}'")
        if not DT_S_RANGE[0] <= self.dt_s <= DT_S_RANGE[1]:
            raise ModelError(f"{source}: metadata key 'dt_s': expected a float from {DT_S_RANGE[0]:g} to "
                             f"{DT_S_RANGE[1]:g} (seconds), found '{self.dt_s!r}'")


_FIELD_NAMES = frozenset(f.name for f in fields(ModelMeta))
_EXPECT = {
    "kind": "a non-empty string",
    "cell": "'lstm' or 'gru'",
    "layers": "a positive int",
    "hidden": "a positive int",
    "input_dim": "a positive int",
    "horizon": "a positive int",
    "obs_len": "a positive int",
    "dt_s": "a positive float (seconds)",
    "features": "a JSON object",
    "training_data": "a JSON object",
    "metrics": "a JSON object",
    "version": "a non-empty string",
    "content_hash": "'sha256:<hex>'",
    "agent_type": "a string",
    "precision": "'fp32', 'int8' or 'fp16'",
    "exporter": "a string",
    "weights_hash": "'sha256:<hex>'",
    "config": "a JSON object",
    "modes": "a positive int",
}
_INTS = ("layers", "hidden", "input_dim", "horizon", "obs_len", "modes")
LIMITS: dict[str, int] = {
    # Far above any model this pipeline runs (the shipped ones: 1 layer, hidden 112-128, 32-44 inputs,
    # 12-30 steps ahead), far below what would exhaust memory: the warm-up's state at batch 64 is at most
    # 2 x 16 x 64 x 4096 float32 (32 MiB).
    "layers": 16,
    "hidden": 4096,
    "input_dim": 4096,
    "horizon": 1000,
    "obs_len": 10000,
    "modes": 64,
}
DT_S_RANGE = (0.001, 60.0)  # seconds; the node rounds dt_s to whole nanoseconds for its sample grid
_JSON = ("features", "training_data", "metrics", "config")


def _parse(source: str, key: str, text: str) -> Any:
    def bad() -> ModelError:
        shown = text if len(text) <= 60 else text[:57] + "..."
        return ModelError(f"{source}: metadata key {key!r}: expected {_EXPECT[key]}, found {shown!r}")

    if key in _INTS:
        try:
            value = int(text)
        except ValueError:
            raise bad() from None
        if value <= 0:
            raise bad()
        return value
    if key == "dt_s":
        try:
            value_f = float(text)
        except ValueError:
            raise bad() from None
        if not (math.isfinite(value_f) and value_f > 0):
            raise bad()
        return value_f
    if key in _JSON:
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
            raise bad() from None
        if not isinstance(obj, dict):
            raise bad()
        return obj
    if key == "cell" and text not in _CELLS:
        raise bad()
    if key == "precision" and text not in ("fp32", "int8", "fp16"):
        raise bad()
    if key in ("content_hash", "weights_hash") and not text.startswith("sha256:"):
        raise bad()
    if key in ("kind", "version") and not text:
        raise bad()
    return text


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and Paths show up in metrics and data descriptions.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


# --------------------------------------------------------------------------------------------------
# Providers and session


def default_providers() -> list[str]:
    """TensorRT, CUDA, CPU: the ones this onnxruntime build has, in that order."""
    available = ort.get_available_providers()
    return [p for p in DEFAULT_PROVIDERS if p in available]


def _session_options(threads: int, optimise: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3  # errors only: the node's log is not onnxruntime's
    return so


def _dims(shape: Sequence[Any]) -> list[Any]:
    # onnxruntime reports a symbolic dim as its name (str) or None, a fixed dim as int.
    return ["batch" if not isinstance(d, int) else d for d in shape]


def _check_io(source: str, kind: str, got: Sequence[Any], expected: list[tuple[str, list[Any]]]) -> None:
    """Compare the graph's inputs or outputs with what the metadata implies."""
    names = [a.name for a in got]
    want_names = [n for n, _ in expected]
    if names != want_names:
        raise ModelError(f"{source}: graph {kind}s: expected {want_names}, found {names}")
    for arg, (name, want) in zip(got, expected, strict=True):
        if arg.type != "tensor(float)":
            raise ModelError(f"{source}: {kind} {name!r}: expected tensor(float), found {arg.type}")
        dims = list(arg.shape)
        if len(dims) != len(want):
            raise ModelError(
                f"{source}: {kind} {name!r}: expected shape {_fmt(want)}, found {_fmt(_dims(dims))}"
            )
        for i, (d, w) in enumerate(zip(dims, want, strict=True)):
            if w == "batch":
                if isinstance(d, int):
                    raise ModelError(
                        f"{source}: {kind} {name!r}: dim {i} is fixed at {d}, expected a dynamic batch axis "
                        f"(shape {_fmt(want)})"
                    )
            elif d != w:
                raise ModelError(
                    f"{source}: {kind} {name!r}: expected shape {_fmt(want)}, found {_fmt(_dims(dims))}"
                )


def _fmt(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _open(source: str, options: ort.SessionOptions, providers: list[str],
          fallback: bool = True) -> ort.InferenceSession:
    # fallback=False: onnxruntime would print an "EP Error" banner to stdout and retry on the CPU provider,
    # noise before a launcher's one-line error when the CPU provider is the one that failed.
    try:
        return ort.InferenceSession(source, options, providers=providers, enable_fallback=int(fallback))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{source}: not a loadable ONNX model: {first}") from None


def _checked(sess: ort.InferenceSession, source: str) -> tuple[ModelMeta, list[str]]:
    """The metadata of a session's model and its state input names, once both are checked."""
    try:  # onnxruntime decodes the file's strings lazily: a damaged byte surfaces here
        props = sess.get_modelmeta().custom_metadata_map
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        _ = [(a.name, a.type, a.shape) for a in (*inputs, *outputs)]
    except UnicodeDecodeError as exc:
        raise ModelError(f"{source}: corrupt model file: a metadata value or graph name is not UTF-8 "
                         f"({exc.reason} at byte {exc.start})") from None
    m = ModelMeta.from_props(props, source)
    m.check_limits(source)  # before the shapes below are compared to them and the warm-up sizes arrays by them
    state_names = ["h", "c"] if m.cell == "lstm" else ["h"]
    state_shape: list[Any] = [m.layers, "batch", m.hidden]
    _check_io(source, "input", inputs, [("x", ["batch", m.input_dim])] + [(n, state_shape) for n in state_names])
    pred: list[tuple[str, list[Any]]] = [("pred", ["batch", m.horizon, 2])]
    if m.modes > 1:
        pred = [("pred", ["batch", m.modes, m.horizon, 2]), ("logit", ["batch", m.modes])]
    _check_io(source, "output", outputs, pred + [(n + "_out", state_shape) for n in state_names])
    return m, state_names


# --------------------------------------------------------------------------------------------------
# The model


class StepModel:
    """One exported step model: `pred, state = model.step(x, state)`.

    `state` is a tuple of float32 [L,B,H] arrays, (h, c) for an LSTM and (h,) for a GRU, as made by
    `zero_state(B)`. Every array `step` returns is fresh: the caller may keep, scatter or mutate it,
    and a later call never overwrites it.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int = 1) -> None:
        self.path = Path(path)
        source = str(self.path)
        if not self.path.is_file():
            raise ModelError(f"{source}: no such model file")
        if threads < 1:
            raise ModelError(f"{source}: threads: expected an int >= 1, found {threads!r}")
        chosen = default_providers() if providers is None else list(providers)
        available = ort.get_available_providers()
        unknown = [p for p in chosen if p not in available]
        if unknown or not chosen:
            raise ModelError(
                f"{source}: providers: expected a non-empty subset of {available}, found {chosen}"
            )
        self._sess = _open(source, _session_options(threads), chosen)
        self.meta, state_names = _checked(self._sess, source)
        m = self.meta
        self._input_names = ["x", *state_names]
        self._heads = 1 if m.modes == 1 else 2   # pred, and logit for K > 1
        self._output_names = ["pred", "logit"][: self._heads] + [n + "_out" for n in state_names]
        self._state_shape = (m.layers, m.hidden)
        self.providers: list[str] = self._sess.get_providers()
        try:
            self._warm_up()
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - a graph that loads but cannot run (a damaged weight shape)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{source}: the model loads but does not run: {first}") from None

    @staticmethod
    def inspect(path: str | Path) -> ModelMeta:
        """Make the checks of a load (file, ONNX, metadata and its bounds, graph inputs and outputs) and
        return the metadata, without optimising or running the graph: a launch file's validation calls
        this for every model it names, before any process starts."""
        source = str(path)
        if not Path(path).is_file():
            raise ModelError(f"{source}: no such model file")
        sess = _open(source, _session_options(1, optimise=False), ["CPUExecutionProvider"], fallback=False)
        return _checked(sess, source)[0]

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"StepModel({str(self.path)!r}, {m.cell} {m.input_dim}->{m.hidden}x{m.layers}, "
            f"T={m.horizon}{' K=' + str(m.modes) if m.modes > 1 else ''} @ {m.dt_s}s, {m.precision}, "
            f"providers={self.providers})"
        )

    def zero_state(self, batch: int) -> tuple[np.ndarray, ...]:
        """The state of `batch` agents never seen before."""
        layers, hidden = self._state_shape
        return tuple(
            np.zeros((layers, batch, hidden), np.float32) for _ in range(len(self._input_names) - 1)
        )

    def step(
        self, x: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Advance `B` agents by one sample period: x[B,F] float32 -> (pred[B,T,2], new state); of K
        futures the most probable."""
        pred, prob, state = self.step_modes(x, state)
        if self.meta.modes == 1:
            return pred[:, 0], state
        return pred[np.arange(len(pred)), prob.argmax(-1)], state

    def step_modes(
        self, x: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
        """x[B,F] float32 -> (pred[B,K,T,2], prob[B,K] (the softmax of the logits), new state); K=1: prob 1."""
        x = np.ascontiguousarray(x, dtype=np.float32)  # no copy when it already is
        if x.ndim != 2 or x.shape[1] != self.meta.input_dim:
            raise ModelError(
                f"{self.path}: step input 'x': expected shape [B, {self.meta.input_dim}], "
                f"found {list(x.shape)}"
            )
        batch = x.shape[0]
        if len(state) != len(self._input_names) - 1:
            raise ModelError(
                f"{self.path}: step state: expected {len(self._input_names) - 1} arrays "
                f"({', '.join(self._input_names[1:])}) for a {self.meta.cell} model, found {len(state)}"
            )
        feed = {"x": x}
        layers, hidden = self._state_shape
        for name, s in zip(self._input_names[1:], state, strict=True):
            s = np.ascontiguousarray(s, dtype=np.float32)
            if s.shape != (layers, batch, hidden):
                raise ModelError(
                    f"{self.path}: step state {name!r}: expected shape [{layers}, {batch}, {hidden}], "
                    f"found {list(s.shape)}"
                )
            feed[name] = s
        k = self.meta.modes
        if batch == 0:  # nothing to advance; onnxruntime kernels need not accept an empty batch
            return np.zeros((0, k, self.meta.horizon, 2), np.float32), np.zeros((0, k), np.float32), self.zero_state(0)
        outs = self._sess.run(self._output_names, feed)
        if k == 1:
            return outs[0][:, None], np.ones((batch, 1), np.float32), tuple(outs[1:])
        z = np.exp(outs[1] - outs[1].max(-1, keepdims=True))
        return outs[0], z / z.sum(-1, keepdims=True), tuple(outs[2:])

    def _warm_up(self) -> None:
        # Batch 1 (a single new agent) and 64 (a busy scene): the first run of each shape plans memory.
        for batch in (1, 1, 64):
            x = np.zeros((batch, self.meta.input_dim), np.float32)
            self.step(x, self.zero_state(batch))
