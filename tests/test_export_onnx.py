"""export/torch_export/onnx_export.py: the step graph, its parity with torch, metadata, variants and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from export.runtime.features import default_spec, feature_dim  # noqa: E402
from export.runtime.step_model import StepModel  # noqa: E402
from export.torch_export.onnx_export import export_onnx, main  # noqa: E402
from export.torch_export.parity import (  # noqa: E402
    ExportError,  # noqa: E402
    graph_hash,
    max_abs_diff,
)
from models.trajectory import ModelConfig, TrajectoryModel, save_checkpoint  # noqa: E402

METRICS = {"cv_k": 3, "val": {"ade": 0.52, "fde": 1.1}}
DATA = {"dataset": "eth_ucy", "fold": "hotel", "scenes": ["eth", "univ"]}


def _ckpt(tmp: Path, cell: str, seed: int = 0, layers: int = 2) -> tuple[Path, TrajectoryModel]:
    torch.manual_seed(seed)
    spec = default_spec("vehicle")
    cfg = ModelConfig(cell=cell, input_dim=feature_dim(spec), hidden=24, layers=layers, horizon=30, obs_len=20,
                      dt_s=0.1, features=spec)
    model = TrajectoryModel(cfg).eval()
    path = tmp / f"{cell}{seed}.pt"
    save_checkpoint(path, model, cfg, METRICS, DATA)
    return path, model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, TrajectoryModel]]:
    tmp = tmp_path_factory.mktemp("export")
    out = {}
    for cell in ("lstm", "gru"):
        ckpt, model = _ckpt(tmp, cell)
        onnx_path = tmp / f"{cell}.onnx"
        export_onnx(ckpt, onnx_path, int8=cell == "lstm", fp16=True)
        out[cell] = (ckpt, onnx_path, model)
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnxruntime_matches_torch_over_a_200_step_rollout_with_state_carried(
    cell: str, batch: int, exported: dict[str, tuple[Path, Path, TrajectoryModel]]
) -> None:
    _, path, model = exported[cell]
    assert max_abs_diff(model, StepModel(path), steps=200, batch=batch) <= 1e-4


def test_the_graph_passes_the_checker_with_a_dynamic_batch_and_opset_17_or_more(
    exported: dict[str, tuple[Path, Path, TrajectoryModel]],
) -> None:
    proto = onnx.load(str(exported["lstm"][1]))
    onnx.checker.check_model(proto, full_check=True)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    shapes = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(proto.graph.input) + list(proto.graph.output)}
    assert shapes == {"x": ["batch", 44], "h": [2, "batch", 24], "c": [2, "batch", 24],
                      "pred": ["batch", 30, 2], "h_out": [2, "batch", 24], "c_out": [2, "batch", 24]}
    assert [n.op_type for n in proto.graph.node].count("LSTM") == 2  # native op, one per layer


def test_metadata_carries_config_features_training_data_and_metrics(
    exported: dict[str, tuple[Path, Path, TrajectoryModel]],
) -> None:
    meta = StepModel(exported["gru"][1]).meta
    assert (meta.cell, meta.layers, meta.hidden, meta.input_dim, meta.horizon) == ("gru", 2, 24, 44, 30)
    assert (meta.obs_len, meta.dt_s, meta.precision) == (20, 0.1, "fp32")
    assert meta.features == default_spec("vehicle")
    assert meta.training_data == DATA and meta.metrics == METRICS
    assert meta.content_hash == graph_hash(onnx.load(str(exported["gru"][1])))


def test_the_same_checkpoint_exports_to_the_same_hash_and_other_weights_do_not(tmp_path: Path) -> None:
    ckpt_a, _ = _ckpt(tmp_path, "lstm", seed=0, layers=1)
    ckpt_b, _ = _ckpt(tmp_path, "lstm", seed=1, layers=1)
    metas = []
    for i, ckpt in enumerate([ckpt_a, ckpt_a, ckpt_b]):
        export_onnx(ckpt, tmp_path / f"m{i}.onnx")
        metas.append(StepModel(tmp_path / f"m{i}.onnx").meta)
    assert metas[0].content_hash == metas[1].content_hash != metas[2].content_hash
    assert metas[0].weights_hash == metas[1].weights_hash != metas[2].weights_hash


def test_the_dynamo_exporter_also_gives_a_dynamic_batch_and_parity(tmp_path: Path) -> None:
    ckpt, model = _ckpt(tmp_path, "lstm", layers=1)
    export_onnx(ckpt, tmp_path / "dyn.onnx", exporter="dynamo")
    step_model = StepModel(tmp_path / "dyn.onnx")  # refuses a batch axis fixed at the example's size
    assert step_model.meta.exporter == "dynamo"
    for batch in (1, 7):
        assert max_abs_diff(model, step_model, steps=50, batch=batch) <= 1e-4


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_quantised_variants_load_with_their_own_metadata_and_stay_close(
    precision: str, exported: dict[str, tuple[Path, Path, TrajectoryModel]]
) -> None:
    _, path, model = exported["lstm"]
    variant = path.with_name(f"lstm.{precision}.onnx")
    step_model = StepModel(variant)
    base = StepModel(path).meta
    assert step_model.meta.precision == precision
    assert step_model.meta.content_hash != base.content_hash and step_model.meta.weights_hash == base.weights_hash
    assert step_model.meta.features == base.features
    diff = max_abs_diff(model, step_model, steps=50, batch=7)
    assert 0 < diff < (0.1 if precision == "int8" else 0.01)
    if precision == "int8":
        assert variant.stat().st_size < path.stat().st_size


def test_cli_writes_the_model_and_its_variants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, _ = _ckpt(tmp_path, "lstm", layers=1)
    assert main([str(ckpt), "-o", str(tmp_path / "out" / "m.onnx"), "--int8", "--fp16"]) == 0
    out = capsys.readouterr().out
    for name in ("m.onnx", "m.int8.onnx", "m.fp16.onnx"):
        assert (tmp_path / "out" / name).is_file() and f"wrote {tmp_path / 'out' / name}" in out


def test_cli_reports_a_missing_checkpoint_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "none.pt"), "-o", str(tmp_path / "m.onnx")]) == 1
    assert capsys.readouterr().err == f"ERROR: {tmp_path / 'none.pt'}: no such checkpoint file\n"


def test_cli_reports_a_corrupt_checkpoint_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main([str(bad), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR: {bad}: cannot load checkpoint: ") and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_an_unknown_exporter_or_old_opset_is_refused(tmp_path: Path) -> None:
    ckpt, _ = _ckpt(tmp_path, "lstm", layers=1)
    with pytest.raises(ExportError, match=r"opset: expected >= 17, found 13"):
        export_onnx(ckpt, tmp_path / "m.onnx", opset=13)
    with pytest.raises(ExportError, match=r"exporter: expected 'torchscript' or 'dynamo', found 'jit'"):
        export_onnx(ckpt, tmp_path / "m.onnx", exporter="jit")


def test_fp16_variant_keeps_float32_inputs_and_outputs(exported: dict[str, tuple[Path, Path, TrajectoryModel]]) -> None:
    model = StepModel(exported["gru"][1].with_name("gru.fp16.onnx"))
    pred, (h,) = model.step(np.zeros((3, 44), np.float32), model.zero_state(3))
    assert pred.dtype == np.float32 and h.dtype == np.float32


def test_cli_card_adds_then_replaces_the_models_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, _ = _ckpt(tmp_path, "lstm", layers=1)
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Pretrained models\n\nHand-written intro.\n")
    args = [str(ckpt), "-o", str(tmp_path / "veh.onnx"), "--int8", "--card", str(card)]
    assert main(args) == 0
    assert main(args) == 0  # a re-export replaces its section instead of appending a second one
    text = card.read_text()
    assert text.startswith("# Pretrained models\n\nHand-written intro.\n")
    assert text.count("<!-- drivecast-export: veh.onnx -->") == 1 and text.count("### veh.onnx") == 1
    assert f"- Command: `drivecast export {' '.join(args)}`" in text
    assert "| veh.int8.onnx | int8 |" in text and "window ADE/FDE 0.520/1.100" not in text  # METRICS has no 'model'
    assert "Trained on: eth_ucy fold hotel" in text


def test_int8_of_a_gru_is_refused_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, _ = _ckpt(tmp_path, "gru", layers=1)
    assert main([str(ckpt), "-o", str(tmp_path / "g.onnx"), "--int8"]) == 1
    assert capsys.readouterr().err == (f"ERROR: {ckpt}: --int8: onnxruntime has no quantised GRU kernel; "
                                       "expected an LSTM model (export without --int8)\n")
    assert not list(tmp_path.glob("*.onnx"))


def test_int8_quantises_the_lstm_and_keeps_the_head_in_float(
    exported: dict[str, tuple[Path, Path, TrajectoryModel]],
) -> None:
    proto = onnx.load(str(exported["lstm"][1].with_name("lstm.int8.onnx")))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
    assert "MatMul" in ops and "MatMulInteger" not in ops


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_multimodal_model_exports_every_future_and_its_probability(cell: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    spec = default_spec("vehicle")
    cfg = ModelConfig(cell=cell, input_dim=feature_dim(spec), hidden=16, layers=1, horizon=30, obs_len=20, dt_s=0.1,
                      features=spec, modes=6)
    model = TrajectoryModel(cfg).eval()
    ckpt = tmp_path / "k6.pt"
    save_checkpoint(ckpt, model, cfg, METRICS, DATA)
    path = tmp_path / "k6.onnx"
    export_onnx(ckpt, path, int8=cell == "lstm", fp16=True)
    step_model = StepModel(path)
    assert step_model.meta.modes == 6 and "K=6" in repr(step_model)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["format"] == "drivecast-step/2" and props["modes"] == "6"
    # every future and the probabilities, not only the most probable future, match torch
    assert max_abs_diff(model, step_model, steps=100, batch=7) <= 1e-4
    x = np.random.default_rng(0).normal(size=(5, cfg.input_dim)).astype(np.float32)
    pred, prob, state = step_model.step_modes(x, step_model.zero_state(5))
    assert pred.shape == (5, 6, 30, 2) and prob.shape == (5, 6)
    np.testing.assert_allclose(prob.sum(1), 1.0, atol=1e-5)
    top, state2 = step_model.step(x, step_model.zero_state(5))
    np.testing.assert_array_equal(top, pred[np.arange(5), prob.argmax(1)])
    for a, b in zip(state, state2, strict=True):
        np.testing.assert_array_equal(a, b)
    empty = step_model.step_modes(np.zeros((0, cfg.input_dim), np.float32), step_model.zero_state(0))
    assert empty[0].shape == (0, 6, 30, 2) and empty[1].shape == (0, 6)
    for variant in (["fp16"] + (["int8"] if cell == "lstm" else [])):
        v = StepModel(tmp_path / f"k6.{variant}.onnx")
        got, p, _ = v.step_modes(x, v.zero_state(5))
        assert v.meta.modes == 6 and got.shape == pred.shape and np.abs(p - prob).max() < 0.1


def test_a_k1_model_keeps_the_first_format_and_graph(exported: dict[str, tuple[Path, Path, TrajectoryModel]]) -> None:
    _, path, _ = exported["lstm"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["format"] == "drivecast-step/1" and "modes" not in props
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["pred", "h_out", "c_out"]
