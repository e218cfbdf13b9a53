"""`drivecast export CKPT -o model.onnx [--int8] [--fp16]`: a checkpoint -> a self-describing step graph.

The graph is the model's streaming step, `(x[B,F], h[L,B,H], c[L,B,H]) -> (pred[B,T,2], h_out, c_out)`
(GRU: no c/c_out), with a dynamic batch axis, so a node advances any number of agents in one call; the
model's description goes into metadata_props (`export.runtime.step_model.ModelMeta`), so a node needs
nothing but the .onnx file.

The TorchScript exporter (`dynamo=False`) is the default because its graph has fewer nodes, and at small
batch a step's cost is kernel dispatch; `--exporter dynamo` gives the same native LSTM/GRU op and is the
tested fallback for the day TorchScript export (deprecated in torch 2.x, its warning silenced here) is
removed. Dynamo silently fixes the batch at 1 given a batch-1 example, so both export a batch-3 example
with an explicit dynamic dim, and the runtime refuses a fixed batch axis.

Variants are written next to the fp32 model: `model.int8.onnx` (dynamic quantisation of the LSTM) and
`model.fp16.onnx` (float32 inputs/outputs kept by Casts, so the runtime API does not change). They
cannot match torch to 1e-4 by construction; `drivecast verify` reports their ADE/FDE change.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from export.torch_export.model_card import card_section, update_card
from export.torch_export.parity import ExportError, graph_hash, load_checkpoint, rollout_diff, weights_hash

__all__ = [
    "export_module",
    "export_onnx",
    "main",
    "to_fp16",
    "to_int8",
    "write_variant",
]

OPSET = 18
EXAMPLE_BATCH = 3  # >= 2 (dynamo bakes a batch-1 example in) and not a size the tests run (1, 7, 64)
PARITY_TOL = 1e-4


# --------------------------------------------------------------------------------------------------
# The step graph


class _StepGraph(torch.nn.Module):
    """The model's `step` with the state as separate tensors: what the ONNX graph computes."""

    def __init__(self, model: Any, cell: str) -> None:
        super().__init__()
        self.model = model
        self.cell = cell
        self.modes = int(getattr(getattr(model, "cfg", None), "modes", 1))

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None = None) -> Any:
        if self.modes > 1:
            pred, logit, h_out, c_out = self.model.step_modes(x, h, c)
            heads: tuple[torch.Tensor, ...] = (pred, logit)
        else:
            pred, h_out, c_out = self.model.step(x, h, c)
            heads = (pred,)
        if self.cell == "gru":
            return (*heads, h_out)
        return (*heads, h_out, c_out)


def _names(cell: str, modes: int = 1) -> tuple[list[str], list[str]]:
    state = ["h", "c"] if cell == "lstm" else ["h"]
    return ["x", *state], ["pred", "logit"][: 1 if modes == 1 else 2] + [s + "_out" for s in state]


def _trace_to_onnx(
    model: torch.nn.Module, cell: str, input_dim: int, layers: int, hidden: int, exporter: str, opset: int
) -> onnx.ModelProto:
    wrapper = _StepGraph(model, cell).eval()
    inputs, outputs = _names(cell, wrapper.modes)
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
            axes = {n: {0: "batch"} for n in ["x", *outputs] if not n.endswith("_out")}
            axes.update({n: {1: "batch"} for n in inputs[1:] + outputs if n[:1] in "hc"})
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
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
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
        modes=int(conf.get("modes", 1)),
    )


# --------------------------------------------------------------------------------------------------
# Quantised variants


def to_int8(src: Path, dst: Path) -> None:
    """onnxruntime dynamic quantisation of the LSTM op (int8 weights per channel, activations per call).

    The linear head stays fp32: it maps straight to positions, so its rounding would land in the output
    undamped (measured: quantising it too moves the predicted points further). onnxruntime has no
    quantised GRU kernel: GRU models get no int8 variant.
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
    casts: the gain there is file size; fp16 compute is for the CUDA/TensorRT providers. Written with
    onnx helpers because onnxconverter-common is not a dependency.
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
        worst = max(rollout_diff(model, step_model, check_steps, b)[1] for b in (1, 5))
        if not worst <= PARITY_TOL:
            out_path.unlink()
            raise ExportError(
                f"{out_path}: onnxruntime vs torch diff {worst:.3g} (over max(1, |prediction|)) in {check_steps} "
                f"steps, expected <= {PARITY_TOL}; file removed"
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
              f"{m.input_dim}->{m.hidden}x{m.layers}, T={m.horizon}{' K=' + str(m.modes) if m.modes > 1 else ''} "
              f"@ {m.dt_s}s, {m.content_hash[:19]})")
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
