"""`drivecast export CKPT -o model.onnx [--int8] [--fp16]`: a checkpoint -> a self-describing step graph.

The graph is the model's streaming step, `(x[B,F], h[L,B,H], c[L,B,H]) -> (pred[B,T,2], h_out, c_out)`
(GRU: no c/c_out), with a dynamic batch axis, so a node advances any number of agents in one call; the
model's description goes into metadata_props (`export.runtime.step_model.ModelMeta`), so a node needs nothing but
the .onnx file.

Exporter: the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`), chosen on
measurement, with the dynamo exporter one flag away (`--exporter dynamo`). Both emit the native ONNX
LSTM/GRU op and agree with torch to ~1e-7. Measured side by side in onnxruntime, one thread
(bench/step.py, model LSTM 44->128x1 + head, T=30): TorchScript graph 21.9 us per step at batch 1,
dynamo graph 27.6 us (+26%); at batch 64, 161 vs 169 us. The dynamo graph keeps runtime
Shape/Slice/Reshape plumbing around each LSTM (52 vs 33 nodes for an LSTM 8->64x2, where it measured
31.2 vs 22.8 us), and at small batch a step's cost is kernel dispatch, so fewer nodes win.
The dynamo exporter also silently fixes the batch at 1 when given a batch-1 example; we export with a
batch-3 example and an explicit dynamic dim either way, and the runtime refuses a fixed batch axis.
TorchScript export is deprecated in torch 2.x; its warning is silenced here on purpose, and the day it
is removed `export_onnx(..., exporter="dynamo")` is the tested fallback (tests/test_export_onnx.py).

Quantised variants are written next to the fp32 model: `model.int8.onnx` (onnxruntime dynamic
quantisation: int8 weights, activations quantised per call) and `model.fp16.onnx` (every float
tensor in fp16, float32 inputs/outputs kept by Cast nodes so the runtime API does not change;
onnxconverter-common is not a dependency, so the conversion is done here with onnx helpers).
Their parity with torch is not 1e-4 by construction; `drivecast verify` reports their ADE/FDE change.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import io
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from export.runtime.step_model import ModelError, ModelMeta, StepModel

__all__ = [
    "ExportError",
    "card_section",
    "export_module",
    "export_onnx",
    "graph_hash",
    "load_checkpoint",
    "main",
    "max_abs_diff",
    "to_fp16",
    "to_int8",
    "update_card",
    "weights_hash",
    "write_variant",
]

OPSET = 18
EXAMPLE_BATCH = 3  # >= 2 (dynamo bakes a batch-1 example in) and not a size the tests run (1, 7, 64)
PARITY_TOL = 1e-4


class ExportError(ValueError):
    """A checkpoint that cannot be exported, or an export that does not match torch."""


# --------------------------------------------------------------------------------------------------
# The step graph


class _StepGraph(torch.nn.Module):
    """The model's `step` with the state as separate tensors: what the ONNX graph computes."""

    def __init__(self, model: Any, cell: str) -> None:
        super().__init__()
        self.model = model
        self.cell = cell

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None) -> Any:
        pred, h_out, c_out = self.model.step(x, h, c)
        if self.cell == "gru":
            return pred, h_out
        return pred, h_out, c_out


def _names(cell: str) -> tuple[list[str], list[str]]:
    state = ["h", "c"] if cell == "lstm" else ["h"]
    return ["x", *state], ["pred"] + [s + "_out" for s in state]


def _trace_to_onnx(
    model: torch.nn.Module, cell: str, input_dim: int, layers: int, hidden: int, exporter: str, opset: int
) -> onnx.ModelProto:
    wrapper = _StepGraph(model, cell).eval()
    inputs, outputs = _names(cell)
    b = EXAMPLE_BATCH
    gen = torch.Generator().manual_seed(0)
    example = (torch.randn(b, input_dim, generator=gen),) + tuple(
        torch.randn(layers, b, hidden, generator=gen) * 0.1 for _ in inputs[1:]
    )
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript-exporter deprecation and tracer notes: known, see the module docstring.
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {"x": {0: "batch"}, "pred": {0: "batch"}}
            axes.update({n: {1: "batch"} for n in inputs[1:] + outputs[1:]})
            torch.onnx.export(
                wrapper, example, buf,  # type: ignore[arg-type]  # a file-like object is accepted
                dynamo=False, input_names=inputs, output_names=outputs,
                dynamic_axes=axes, opset_version=opset,
            )
            proto = onnx.load_from_string(buf.getvalue())
        elif exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            shapes = {"x": {0: batch}, **{n: {1: batch} for n in inputs[1:]}}
            program = torch.onnx.export(
                wrapper, example, dynamo=True, input_names=inputs, output_names=outputs,
                dynamic_shapes=shapes, opset_version=opset, verbose=False,
            )
            if program is None:
                raise ExportError("dynamo exporter returned no program")
            proto = program.model_proto
        else:
            raise ExportError(f"exporter: expected 'torchscript' or 'dynamo', found {exporter!r}")
    _name_batch_dims(proto)
    return proto


def _name_batch_dims(proto: onnx.ModelProto) -> None:
    """Call the dynamic axis 'batch' on every input/output, whatever the exporter named it."""
    for vi in list(proto.graph.input) + list(proto.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") or not d.HasField("dim_value"):
                d.dim_param = "batch"


def graph_hash(proto: onnx.ModelProto) -> str:
    """'sha256:<hex>' of the graph and opsets, metadata excluded: the same weights and ops, the same hash."""
    h = hashlib.sha256()
    for op in proto.opset_import:
        h.update(f"{op.domain}:{op.version};".encode())
    h.update(proto.graph.SerializeToString(deterministic=True))
    return "sha256:" + h.hexdigest()


def weights_hash(model: torch.nn.Module) -> str:
    """'sha256:<hex>' of the state_dict (names, dtypes, shapes, values): which trained weights these are."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        arr = tensor.detach().cpu().contiguous().numpy()
        h.update(f"{name}:{arr.dtype}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


def _save(proto: onnx.ModelProto, path: Path) -> None:
    """Write under a temporary name, then rename: a node never loads a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def _set_meta(proto: onnx.ModelProto, meta: ModelMeta) -> None:
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta.to_props())
    proto.producer_name = "drivecast"
    proto.producer_version = meta.version


def _version() -> str:
    try:
        return importlib.metadata.version("drivecast")
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib

        return str(tomllib.loads(pyproject.read_text())["project"]["version"]) + "+src"
    except Exception:  # noqa: BLE001 - a version string must never stop an export
        return "unknown"


def _config_dict(cfg: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return dict(cfg)
    raise ExportError(f"config: expected a dataclass or dict, found {type(cfg).__name__}")


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return {what: value}


# Per-epoch training curves: they stay in the checkpoint and metrics.json; a node has no use for them.
_METRICS_LEFT_OUT = ("history",)


def _meta_from_config(cfg: Any, metrics: Any, data: Any, exporter: str) -> ModelMeta:
    conf = _config_dict(cfg)
    missing = [k for k in ("cell", "input_dim", "hidden", "layers", "horizon", "obs_len", "dt_s", "features")
               if k not in conf]
    if missing:
        raise ExportError(f"checkpoint config: missing key(s) {missing}; found {sorted(conf)}")
    cell = str(conf["cell"]).lower()
    if cell not in ("lstm", "gru"):
        raise ExportError(f"checkpoint config: cell: expected 'lstm' or 'gru', found {conf['cell']!r}")
    agent_type = conf.get("agent_type") or conf.get("agent_kind")
    return ModelMeta(
        kind=str(conf.get("kind") or "trajectory"),
        cell=cell,
        layers=int(conf["layers"]),
        hidden=int(conf["hidden"]),
        input_dim=int(conf["input_dim"]),
        horizon=int(conf["horizon"]),
        obs_len=int(conf["obs_len"]),
        dt_s=float(conf["dt_s"]),
        features=_as_dict(conf["features"], "features"),
        training_data=_as_dict(data, "data"),
        metrics={k: v for k, v in _as_dict(metrics, "metrics").items() if k not in _METRICS_LEFT_OUT},
        version=_version(),
        content_hash="sha256:" + "0" * 64,  # replaced once the graph exists
        agent_type=str(agent_type) if agent_type else None,
        precision="fp32",
        exporter=exporter,
        config=conf,
    )


# --------------------------------------------------------------------------------------------------
# Parity (shared with export/torch_export/verify.py)


def torch_rollout(
    model: Any, cell: str, xs: np.ndarray, layers: int, hidden: int
) -> list[np.ndarray]:
    """torch predictions for xs[S,B,F], stepping with the state carried from zero."""
    s_n, b = xs.shape[0], xs.shape[1]
    h = torch.zeros(layers, b, hidden)
    c = torch.zeros(layers, b, hidden) if cell == "lstm" else None
    preds = []
    # One thread: small steps gain nothing from OpenMP, and on a busy machine its spin-waiting threads
    # made a 200-step rollout take 9.5 s instead of 0.07 s (2 cores, load 3.4, measured here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for t in range(s_n):
                pred, h, c = model.step(torch.from_numpy(xs[t]), h, c)
                preds.append(pred.numpy().copy())
    finally:
        torch.set_num_threads(threads)
    return preds


def ort_rollout(step_model: StepModel, xs: np.ndarray) -> list[np.ndarray]:
    """onnxruntime predictions for xs[S,B,F], stepping with the state carried from zero."""
    state = step_model.zero_state(xs.shape[1])
    preds = []
    for t in range(xs.shape[0]):
        pred, state = step_model.step(xs[t], state)
        preds.append(pred)
    return preds


def rollout_inputs(steps: int, batch: int, input_dim: int, seed: int = 0) -> np.ndarray:
    """Deterministic inputs xs[S,B,F] for parity checks: smooth, of feature-like scale, some zeros."""
    rng = np.random.default_rng(seed + 1000 * batch)
    xs = rng.normal(0.0, 1.0, (steps, batch, input_dim)).astype(np.float32)
    xs[:, :, input_dim // 2:] *= rng.random((steps, batch, 1)) < 0.7  # neighbours come and go
    return xs


def max_abs_diff(model: Any, step_model: StepModel, steps: int, batch: int) -> float:
    m = step_model.meta
    xs = rollout_inputs(steps, batch, m.input_dim)
    ref = torch_rollout(model, m.cell, xs, m.layers, m.hidden)
    got = ort_rollout(step_model, xs)
    return max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got, strict=True))


# --------------------------------------------------------------------------------------------------
# Quantised variants


def to_int8(src: Path, dst: Path) -> None:
    """onnxruntime dynamic quantisation of the LSTM op (int8 weights per channel, activations per call).

    The linear head stays fp32. Measured on two briefly trained models (val split, mean distance between
    int8 and torch predicted points): quantising everything moved them 1.6 cm on ETH/UCY hotel and 10.0
    cm on Argoverse; the LSTM alone, per channel, 0.8 cm and 4.1 cm, at 91-103 us instead of 85-90 us
    for 64 agents (fp32: 160 us). The head maps straight to positions, so its rounding lands in the
    output undamped. Shipped models (MODEL_CARD.md): pedestrian 2.9 cm (ADE +0.004 m), vehicle 11 cm
    (ADE +0.001 m, FDE +0.011 m). onnxruntime has no quantised GRU kernel: GRU models get no int8 variant.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # its "run pre-processing first" advice is for conv nets
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["LSTM"])
    finally:
        logger.setLevel(level)


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every float initializer and constant in fp16, with Casts at the graph's inputs and outputs.

    The inputs and outputs stay float32 so that `StepModel.step` is the same for every variant. On the
    CPU provider onnxruntime runs the ops that have no fp16 kernel (LSTM) in float32 behind inserted
    casts: the gain there is file size; fp16 compute is for the CUDA/TensorRT providers.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph

    def half(t: onnx.TensorProto) -> None:
        if t.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.clip(arr, -65504, 65504).astype(np.float16), t.name))

    for init in g.initializer:
        half(init)
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                half(attr.t)
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    rename = {vi.name: vi.name + "_fp16" for vi in list(g.input) + list(g.output)}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for i, name in enumerate(node.output):
            if name in rename:
                node.output[i] = rename[name]
    casts_in = [helper.make_node("Cast", [vi.name], [rename[vi.name]], to=TensorProto.FLOAT16) for vi in g.input]
    casts_out = [helper.make_node("Cast", [rename[vi.name]], [vi.name], to=TensorProto.FLOAT) for vi in g.output]
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale float32 shapes; onnxruntime re-infers
    return out


# --------------------------------------------------------------------------------------------------
# Library API


def export_module(
    model: torch.nn.Module,
    cfg: Any,
    out_path: str | Path,
    *,
    metrics: Any = None,
    data: Any = None,
    exporter: str = "torchscript",
    opset: int = OPSET,
    check_steps: int = 20,
) -> ModelMeta:
    """Export a model object (with `.step`) and its ModelConfig; return the metadata written.

    After writing, the file is loaded with the runtime (metadata and I/O checks) and run against torch
    for `check_steps` steps at batch 1 and 5 with the state carried: an export that disagrees by more
    than 1e-4 is deleted and reported, never left behind.
    """
    out_path = Path(out_path)
    model = model.eval()
    meta = _meta_from_config(cfg, metrics, data, exporter)
    proto = _trace_to_onnx(model, meta.cell, meta.input_dim, meta.layers, meta.hidden, exporter, opset)
    meta = dataclasses.replace(meta, content_hash=graph_hash(proto), weights_hash=weights_hash(model))
    _set_meta(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    _save(proto, out_path)
    if check_steps > 0:
        step_model = StepModel(out_path)
        worst = max(max_abs_diff(model, step_model, check_steps, b) for b in (1, 5))
        if not worst <= PARITY_TOL:
            out_path.unlink()
            raise ExportError(
                f"{out_path}: onnxruntime vs torch max abs diff {worst:.3g} over {check_steps} steps, "
                f"expected <= {PARITY_TOL}; file removed"
            )
    return meta


def write_variant(src: Path, precision: str) -> Path:
    """Write `src` (an fp32 export) as `<stem>.<precision>.onnx`, with its own metadata and hash."""
    base = onnx.load(str(src))
    meta = ModelMeta.from_props({p.key: p.value for p in base.metadata_props}, str(src))
    dst = src.with_name(f"{src.stem}.{precision}{src.suffix}")
    if precision == "int8":
        if meta.cell != "lstm":
            raise ExportError(f"{src}: --int8: onnxruntime has no quantised {meta.cell.upper()} kernel; "
                              "expected an LSTM model (export without --int8)")
        scratch = dst.with_name(dst.name + ".quant.tmp")
        try:
            to_int8(src, scratch)
            proto = onnx.load(str(scratch))
        finally:
            scratch.unlink(missing_ok=True)
    elif precision == "fp16":
        proto = to_fp16(base)
    else:
        raise ExportError(f"precision: expected 'int8' or 'fp16', found {precision!r}")
    meta = dataclasses.replace(meta, precision=precision, content_hash=graph_hash(proto))
    _set_meta(proto, meta)
    onnx.checker.check_model(proto)
    _save(proto, dst)
    StepModel(dst)  # it loads, its metadata and I/O check out
    return dst


def load_checkpoint(ckpt_path: str | Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """models.trajectory.load_checkpoint with its failures as one ExportError naming the file."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint file")
    from models.trajectory import load_checkpoint as _load

    try:
        return _load(path)
    except (KeyError, ValueError, TypeError, RuntimeError, EOFError, OSError) as exc:
        raise ExportError(f"{path}: cannot load checkpoint: {type(exc).__name__}: {exc}") from None


def export_onnx(
    ckpt_path: str | Path,
    out_path: str | Path,
    *,
    int8: bool = False,
    fp16: bool = False,
    exporter: str = "torchscript",
    opset: int = OPSET,
) -> list[Path]:
    """Export a checkpoint to `out_path` (fp32) plus the requested variants; return the paths written."""
    if opset < 17:
        raise ExportError(f"opset: expected >= 17, found {opset}")
    model, cfg, ckpt = load_checkpoint(ckpt_path)
    cell = str(_config_dict(cfg).get("cell", "")).lower()
    if int8 and cell != "lstm":  # before anything is written
        raise ExportError(f"{ckpt_path}: --int8: onnxruntime has no quantised {cell.upper()} kernel; "
                          "expected an LSTM model (export without --int8)")
    out = Path(out_path)
    export_module(model, cfg, out, metrics=ckpt.get("metrics"), data=ckpt.get("data"), exporter=exporter,
                  opset=opset)
    written = [out]
    for precision, wanted in (("int8", int8), ("fp16", fp16)):
        if wanted:
            written.append(write_variant(out, precision))
    return written


def _ade_fde(res: Any) -> str:
    if isinstance(res, dict) and "ade" in res and "fde" in res:
        return f"{res['ade']:.3f}/{res['fde']:.3f}"
    return "n/a"


def card_section(paths: list[Path], model: Any, cfg: Any, command: str, data_dir: str | None = None) -> str:
    """A MODEL_CARD.md section for one exported model and its variants: what, from what, how well, how.

    Parity is measured here (200 steps, state carried, batches 1/7/64); with `data_dir` the ADE/FDE of
    each file on the validation split of its training dataset is measured too (export/torch_export/verify.py).
    """
    metas = [StepModel(p).meta for p in paths]
    m = metas[0]
    met, data, f = m.metrics, m.training_data, m.features
    feat = ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("name", "version"))
    lines = [
        f"### {paths[0].name}",
        "",
        (f"- Model: {m.cell.upper()} {m.input_dim}->{m.hidden}x{m.layers} + linear head, predicts T={m.horizon} "
        f"steps at dt={m.dt_s} s (window protocol: {m.obs_len} observed); features "
        f"`{f.get('name')}` v{f.get('version')} ({feat})."),
        f"- Trained on: {data.get('dataset', '?')}"
        + (f" fold {data['fold']}" if data.get("fold") else "")
        + (f", seed {data['seed']}" if "seed" in data else "")
        + (f", {len(data['train_files'])} train files" if isinstance(data.get("train_files"), list) else "")
        + (f"; command `{met['command']}`" if met.get("command") else ""),
        (f"- Validation ({met.get('dataset', data.get('dataset', '?'))} {met.get('split', 'val')}, "
        f"n={met.get('model', {}).get('n', '?')}, meters, K=1): window ADE/FDE {_ade_fde(met.get('model'))}, "
        f"streaming {_ade_fde(met.get('stream'))}, constant velocity (k={met.get('cv_k', '?')}) "
        f"{_ade_fde(met.get('cv'))}."),
        f"- Exported with drivecast {m.version}, {m.exporter} exporter; weights {m.weights_hash[:19]}...",
        f"- Command: `{command}`",
        "",
        "| file | precision | size | content hash | max abs diff vs torch (200 steps, b=1/7/64) |"
        + (" val ADE/FDE window, torch -> onnx | streaming, torch -> onnx | point shift mean/max (m) |"
           if data_dir else ""),
        "|---|---|---|---|---|" + ("---|---|---|" if data_dir else ""),
    ]
    for path, meta in zip(paths, metas, strict=True):
        step_model = StepModel(path)
        diffs = [max_abs_diff(model, step_model, 200, b) for b in (1, 7, 64)]
        row = (f"| {path.name} | {meta.precision} | {path.stat().st_size / 1024:.0f} KiB | "
               f"`{meta.content_hash[:19]}` | {' / '.join(f'{d:.1e}' for d in diffs)} |")
        if data_dir:
            from export.torch_export.verify import dataset_change

            res = dataset_change(step_model, model, cfg, str(data.get("dataset")), data_dir,
                                 str(met.get("split", "val")), data.get("fold"))
            for r in res.values():
                row += (f" {r['torch_ade']:.4f}/{r['torch_fde']:.4f} -> "
                        f"{r['onnx_ade']:.4f}/{r['onnx_fde']:.4f} |")
            row += f" {res['model']['shift_mean_m']:.1e} / {res['model']['shift_max_m']:.1e} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


_CARD_HEADING = "## ONNX exports"
_CARD_INTRO = (
    "Written by `drivecast export ... --card` (export/torch_export/onnx_export.py); each section says the exact command.\n"
    "`NAME.onnx` is fp32, equal to the checkpoint within 1e-4 (`drivecast verify`); `NAME.int8.onnx` quantises the\n"
    "LSTM (onnxruntime dynamic quantisation, head kept fp32); `NAME.fp16.onnx` halves the file (fp16\n"
    "compute on GPU providers; on CPU onnxruntime computes the LSTM in fp32). \"point shift\" is the mean\n"
    "distance between the variant's predicted points and torch's, on the validation split.\n"
)


def update_card(card: Path, key: str, section: str) -> None:
    """Replace this model's section in the card (between markers), or append it; written atomically."""
    begin, end = f"<!-- drivecast-export: {key} -->", f"<!-- /drivecast-export: {key} -->"
    block = f"{begin}\n{section}{end}\n"
    text = card.read_text() if card.is_file() else "# Pretrained models\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        if _CARD_HEADING not in text:
            text = text.rstrip("\n") + f"\n\n{_CARD_HEADING}\n\n{_CARD_INTRO}"
        text = text.rstrip("\n") + "\n\n" + block
    tmp = card.with_name(card.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(card)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="drivecast export", description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="checkpoint written by `drivecast train` (.pt)")
    parser.add_argument("-o", "--output", required=True, help="the fp32 model to write (.onnx)")
    parser.add_argument("--int8", action="store_true", help="also write <output>.int8.onnx (dynamic quantisation)")
    parser.add_argument("--fp16", action="store_true", help="also write <output>.fp16.onnx")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="torch.onnx exporter (default torchscript: fewer nodes, faster steps)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, >= 17 (default {OPSET})")
    parser.add_argument("--card", default=None,
                        help="add or update this model's section in a model card (e.g. models/pretrained/MODEL_CARD.md)")
    parser.add_argument("--data", default=None,
                        help="with --card: the training dataset's directory, to measure each file's val ADE/FDE")
    args = parser.parse_args(argv)
    try:
        paths = export_onnx(args.ckpt, args.output, int8=args.int8, fp16=args.fp16, exporter=args.exporter,
                            opset=args.opset)
    except (ExportError, ModelError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        m = StepModel(path).meta
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB, {m.precision}, {m.cell} "
              f"{m.input_dim}->{m.hidden}x{m.layers}, T={m.horizon} @ {m.dt_s}s, {m.content_hash[:19]})")
    if args.card:
        command = "drivecast export " + " ".join(argv)
        model, cfg, _ = load_checkpoint(args.ckpt)
        try:
            section = card_section(paths, model, cfg, command, args.data)
        except ValueError as exc:  # DatasetError and friends: the export itself is done
            print(f"ERROR: model card not written: {exc}", file=sys.stderr)
            return 1
        update_card(Path(args.card), paths[0].name, section)
        print(f"updated {args.card} (section {paths[0].name})")
    return 0
