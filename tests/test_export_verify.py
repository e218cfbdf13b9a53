"""export/torch_export/verify.py: `drivecast verify MODEL.onnx CKPT` passes a true export and names what is wrong otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from export.runtime.features import default_spec, feature_dim  # noqa: E402
from export.torch_export.onnx_export import export_onnx  # noqa: E402
from export.torch_export.verify import main  # noqa: E402
from models.trajectory import ModelConfig, TrajectoryModel, save_checkpoint  # noqa: E402


def _ckpt(path: Path, cell: str = "lstm", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    spec = default_spec("pedestrian")
    cfg = ModelConfig(cell=cell, input_dim=feature_dim(spec), hidden=16, layers=1, horizon=12, obs_len=8,
                      dt_s=0.4, features=spec)
    save_checkpoint(path, TrajectoryModel(cfg), cfg, {"cv_k": 2}, {"dataset": "synthetic"})
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("verify")
    ckpt = _ckpt(tmp / "m.pt")
    export_onnx(ckpt, tmp / "m.onnx", int8=True, fp16=True)
    return ckpt, tmp / "m.onnx"


@pytest.fixture(scope="module")
def eth_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ETH/UCY-format fold: 6 pedestrians walking curved paths for 40 samples (0.4 s)."""
    root = tmp_path_factory.mktemp("eth")
    (root / "toy" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for ped in range(6):
        heading, speed, pos = rng.uniform(0, 6.28), rng.uniform(0.8, 1.6), rng.uniform(-5, 5, 2)
        for i in range(40):
            heading += 0.05
            pos = pos + 0.4 * speed * np.array([np.cos(heading), np.sin(heading)])
            lines.append(f"{10 * i}\t{ped}\t{pos[0]:.3f}\t{pos[1]:.3f}")
    (root / "toy" / "val" / "toy_val.txt").write_text("\n".join(lines) + "\n")
    return root


def test_a_true_export_passes_with_the_diff_printed_per_batch(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, model = pair
    assert main([str(model), str(ckpt)]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d+)\s+200\s+(\S+)\s+(\S+)$", out, re.MULTILINE)
    assert [int(b) for b, _, _ in rows] == [1, 7, 64]
    assert all(float(scaled) <= 1e-4 for _, _, scaled in rows)
    assert re.search(r"max scaled diff \S+ <= 0\.0001: ok", out)


def test_a_model_from_other_weights_is_refused(pair: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    other = _ckpt(tmp_path / "other.pt", seed=5)
    assert main([str(pair[1]), str(other)]) == 1
    assert re.match(r"ERROR: .*m\.onnx: metadata weights_hash sha256:\w+\.\.\. differs from the checkpoint's "
                    r"sha256:\w+\.\.\.: exported from other weights of the same shape", capsys.readouterr().err)


def test_a_model_of_another_config_is_refused(pair: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    gru = _ckpt(tmp_path / "gru.pt", cell="gru")
    assert main([str(pair[1]), str(gru)]) == 1
    assert "metadata cell='lstm' but the checkpoint has cell='gru'" in capsys.readouterr().err


def test_a_graph_edited_after_export_is_refused(pair: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    proto = onnx.load(str(pair[1]))
    init = proto.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    edited = tmp_path / "edited.onnx"
    onnx.save(proto, str(edited))
    assert main([str(edited), str(pair[0])]) == 1
    assert "the graph was changed after export" in capsys.readouterr().err


def test_missing_files_are_one_error_line(pair: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "no.onnx"), str(pair[0])]) == 1
    assert capsys.readouterr().err == f"ERROR: {tmp_path / 'no.onnx'}: no such model file\n"
    assert main([str(pair[1]), str(tmp_path / "no.pt")]) == 1
    assert capsys.readouterr().err == f"ERROR: {tmp_path / 'no.pt'}: no such checkpoint file\n"


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_a_quantised_variant_reports_its_diff_without_failing(
    precision: str, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    variant = pair[1].with_name(f"m.{precision}.onnx")
    assert main([str(variant), str(pair[0]), "--steps", "50"]) == 0
    out = capsys.readouterr().out
    assert f"{precision}: max abs diff" in out and "pass --dataset/--data" in out


@pytest.mark.parametrize("name", ["m.onnx", "m.int8.onnx"])
def test_with_a_dataset_the_ade_fde_change_is_reported(
    name: str, pair: tuple[Path, Path], eth_like: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = pair[1].with_name(name)
    args = [str(model), str(pair[0]), "--steps", "20", "--dataset", "eth_ucy", "--data", str(eth_like),
            "--fold", "toy"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(model|stream)\s+(\d+)\s+([\d.]+)/([\d.]+)\s+([\d.]+)/([\d.]+)\s+(\S+)/(\S+)", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["model", "stream"] and all(int(r[1]) > 0 for r in rows)
    changes = [abs(float(v)) for r in rows for v in r[6:8]]
    assert max(changes) <= (1e-4 if name == "m.onnx" else 0.05)


def test_a_graph_that_computes_something_else_fails_parity(pair: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # An exporter bug, simulated: a weight changes by 0.1 and the hash is recomputed as export would.
    from export.torch_export.parity import graph_hash

    proto = onnx.load(str(pair[1]))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.1
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    props = {p.key: p.value for p in proto.metadata_props}
    props["content_hash"] = graph_hash(proto)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    bad = tmp_path / "bug.onnx"
    onnx.save(proto, str(bad))
    assert main([str(bad), str(pair[0]), "--steps", "50"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"max scaled diff \S+ > 0\.0001: FAIL", out)


def test_parity_scales_with_the_output_and_fails_on_anything_not_finite() -> None:
    from export.torch_export.parity import compare

    ref = [np.array([[150.0, 0.5]], np.float32)]
    assert compare(ref, [ref[0] + np.array([[5e-3, 0.0]], np.float32)])[1] == pytest.approx(5e-3 / 150, rel=1e-3)
    assert compare(ref, [ref[0] + np.array([[0.0, 5e-3]], np.float32)])[1] == pytest.approx(5e-3, rel=1e-3)
    assert compare(ref, [np.array([[np.nan, 0.5]], np.float32)]) == (float("inf"), float("inf"))
    assert compare([np.array([[np.inf, 0.5]], np.float32)], ref)[1] == float("inf")


PRETRAINED = Path(__file__).resolve().parent.parent / "models" / "pretrained"
SHIPPED = sorted(p for p in PRETRAINED.glob("*.onnx") if p.stem.count(".") == 0)  # the fp32 files


@pytest.mark.skipif(not SHIPPED, reason="no exported models in models/pretrained yet")
@pytest.mark.parametrize("model", SHIPPED, ids=[p.name for p in SHIPPED])
def test_each_shipped_model_is_the_export_of_its_shipped_checkpoint(
    model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retrained .pt without a re-export fails here (weights hash), as does a drifted graph (parity)."""
    assert main([str(model), str(model.with_suffix(".pt")), "--steps", "50"]) == 0, capsys.readouterr().err
