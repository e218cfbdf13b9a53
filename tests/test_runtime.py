"""export/runtime/step_model.py: loading, metadata and I/O checks, stepping, and no torch at run time."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export.runtime.step_model import FORMAT, ModelError, ModelMeta, StepModel, default_providers

torch = pytest.importorskip("torch")
from export.runtime.features import default_spec, feature_dim  # noqa: E402
from export.torch_export.onnx_export import export_module  # noqa: E402
from models.trajectory import ModelConfig, TrajectoryModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _export(tmp: Path, cell: str, name: str) -> tuple[Path, ModelMeta]:
    torch.manual_seed(1)
    spec = default_spec("pedestrian")
    cfg = ModelConfig(cell=cell, input_dim=feature_dim(spec), hidden=16, layers=2, horizon=12, obs_len=8,
                      dt_s=0.4, features=spec)
    path = tmp / name
    meta = export_module(TrajectoryModel(cfg), cfg, path, metrics={"val": {"ade": 0.51, "fde": 1.02}},
                         data={"dataset": "eth_ucy", "fold": "eth"})
    return path, meta


@pytest.fixture(scope="module")
def lstm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelMeta]:
    return _export(tmp_path_factory.mktemp("rt"), "lstm", "lstm.onnx")


@pytest.fixture(scope="module")
def gru(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelMeta]:
    return _export(tmp_path_factory.mktemp("rt"), "gru", "gru.onnx")


def _edited(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    proto = onnx.load(str(src))
    edit(proto)
    onnx.save(proto, str(dst))
    return dst


def _set_prop(proto: onnx.ModelProto, key: str, value: str | None) -> None:
    props = {p.key: p.value for p in proto.metadata_props}
    if value is None:
        props.pop(key)
    else:
        props[key] = value
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)


# --------------------------------------------------------------------------------------------------
# stepping


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_step_returns_prediction_and_state_of_the_right_shapes(cell: str, request: pytest.FixtureRequest) -> None:
    path, meta = request.getfixturevalue(cell)
    model = StepModel(path)
    state = model.zero_state(5)
    assert len(state) == (2 if cell == "lstm" else 1)
    assert all(s.shape == (2, 5, 16) and s.dtype == np.float32 for s in state)
    x = np.random.default_rng(0).normal(size=(5, meta.input_dim)).astype(np.float32)
    pred, new = model.step(x, state)
    assert pred.shape == (5, 12, 2) and pred.dtype == np.float32
    assert len(new) == len(state) and all(s.shape == (2, 5, 16) for s in new)
    assert model.providers[-1] == "CPUExecutionProvider"


def test_step_outputs_belong_to_the_caller(lstm: tuple[Path, ModelMeta]) -> None:
    model = StepModel(lstm[0])
    rng = np.random.default_rng(0)
    x1, x2 = (rng.normal(size=(4, lstm[1].input_dim)).astype(np.float32) for _ in range(2))
    pred1, state1 = model.step(x1, model.zero_state(4))
    kept = [pred1.copy(), *(s.copy() for s in state1)]
    model.step(x2, model.zero_state(4))  # same shapes: would overwrite reused buffers
    for a, b in zip([pred1, *state1], kept, strict=True):
        np.testing.assert_array_equal(a, b)
    state1[0][:] = 0.0  # writable, and writing it does not disturb the next call
    assert pred1.flags.writeable


def test_step_is_deterministic_and_carries_state(lstm: tuple[Path, ModelMeta]) -> None:
    model = StepModel(lstm[0])
    x = np.ones((3, lstm[1].input_dim), np.float32)
    p1, s1 = model.step(x, model.zero_state(3))
    p2, _ = model.step(x, s1)
    p1b, _ = model.step(x, model.zero_state(3))
    np.testing.assert_array_equal(p1, p1b)
    assert not np.allclose(p1, p2)


def test_step_with_no_agents_returns_empty_arrays(lstm: tuple[Path, ModelMeta]) -> None:
    model = StepModel(lstm[0])
    pred, state = model.step(np.zeros((0, lstm[1].input_dim), np.float32), model.zero_state(0))
    assert pred.shape == (0, 12, 2) and state[0].shape == (2, 0, 16)


def test_step_rejects_a_wrong_input_shape(lstm: tuple[Path, ModelMeta]) -> None:
    model = StepModel(lstm[0])
    with pytest.raises(ModelError, match=r"step input 'x': expected shape \[B, 32\], found \[3, 6\]"):
        model.step(np.zeros((3, 6), np.float32), model.zero_state(3))


def test_step_rejects_a_state_of_the_wrong_batch_or_count(lstm: tuple[Path, ModelMeta]) -> None:
    model = StepModel(lstm[0])
    x = np.zeros((3, 32), np.float32)
    with pytest.raises(ModelError, match=r"step state 'h': expected shape \[2, 3, 16\], found \[2, 4, 16\]"):
        model.step(x, model.zero_state(4))
    with pytest.raises(ModelError, match=r"expected 2 arrays \(h, c\) for a lstm model, found 1"):
        model.step(x, model.zero_state(3)[:1])


# --------------------------------------------------------------------------------------------------
# metadata


def test_metadata_round_trips_through_the_file(lstm: tuple[Path, ModelMeta]) -> None:
    path, written = lstm
    meta = StepModel(path).meta
    assert meta == written
    assert (meta.kind, meta.cell, meta.layers, meta.hidden, meta.input_dim) == ("trajectory", "lstm", 2, 16, 32)
    assert (meta.horizon, meta.obs_len, meta.dt_s, meta.precision) == (12, 8, 0.4, "fp32")
    assert meta.features == default_spec("pedestrian")
    assert meta.training_data == {"dataset": "eth_ucy", "fold": "eth"}
    assert meta.metrics == {"val": {"ade": 0.51, "fde": 1.02}}
    assert meta.config["hidden"] == 16 and meta.exporter == "torchscript"
    assert meta.content_hash.startswith("sha256:") and len(meta.content_hash) == 71
    assert meta.version


def test_metadata_props_round_trip_exactly() -> None:
    meta = ModelMeta(kind="trajectory", cell="gru", layers=1, hidden=8, input_dim=4, horizon=30, obs_len=20,
                     dt_s=0.1, features={"scale": 1.0, "nested": [1, 2]}, training_data={}, metrics={"ade": 1.5},
                     version="0.1.0", content_hash="sha256:ab", agent_type="vehicle", precision="int8")
    props = meta.to_props()
    assert props["format"] == FORMAT and json.loads(props["features"]) == {"scale": 1.0, "nested": [1, 2]}
    assert ModelMeta.from_props(props) == meta
    assert "agent_type" not in dataclasses.replace(meta, agent_type=None).to_props()


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.onnx: no such model file"):
        StepModel(tmp_path / "nope.onnx")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_file_is_a_clear_error(damage: str, lstm: tuple[Path, ModelMeta], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    data = lstm[0].read_bytes()
    bad.write_bytes(b"\x00not an onnx model\xff" * 50 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"bad\.onnx: not a loadable ONNX model: "):
        StepModel(bad)


def test_a_model_without_metadata_is_a_clear_error(lstm: tuple[Path, ModelMeta], tmp_path: Path) -> None:
    path = _edited(lstm[0], tmp_path / "bare.onnx", lambda p: p.metadata_props.__delitem__(slice(None)))
    with pytest.raises(ModelError, match=r"bare\.onnx: no drivecast metadata \(metadata_props key 'format' "
                                         r"missing; keys found: none\); export the model with `drivecast export`"):
        StepModel(path)


def test_a_missing_metadata_key_is_named(lstm: tuple[Path, ModelMeta], tmp_path: Path) -> None:
    path = _edited(lstm[0], tmp_path / "m.onnx", lambda p: _set_prop(p, "horizon", None))
    with pytest.raises(ModelError, match=r"metadata key 'horizon' missing \(expected a positive int\)"):
        StepModel(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cell", "rnn", r"metadata key 'cell': expected 'lstm' or 'gru', found 'rnn'"),
        ("dt_s", "-0.1", r"metadata key 'dt_s': expected a positive float \(seconds\), found '-0.1'"),
        ("hidden", "sixteen", r"metadata key 'hidden': expected a positive int, found 'sixteen'"),
        ("features", "[1, 2]", r"metadata key 'features': expected a JSON object, found '\[1, 2\]'"),
        ("format", "drivecast-step/0", r"metadata key 'format': expected 'drivecast-step/1' or 'drivecast-step/2', found 'drivecast-step/0'"),
    ],
)
def test_incompatible_metadata_names_key_value_and_expectation(
    key: str, value: str, message: str, lstm: tuple[Path, ModelMeta], tmp_path: Path
) -> None:
    path = _edited(lstm[0], tmp_path / "m.onnx", lambda p: _set_prop(p, key, value))
    with pytest.raises(ModelError, match=message):
        StepModel(path)


def test_a_model_whose_shapes_disagree_with_its_metadata_is_a_clear_error(
    lstm: tuple[Path, ModelMeta], tmp_path: Path
) -> None:
    # The graph takes x[batch, 32]; the metadata claims 10 features.
    path = _edited(lstm[0], tmp_path / "shape.onnx", lambda p: _set_prop(p, "input_dim", "10"))
    with pytest.raises(ModelError, match=r"shape\.onnx: input 'x': expected shape \[batch, 10\], found \[batch, 32\]"):
        StepModel(path)
    path = _edited(lstm[0], tmp_path / "horizon.onnx", lambda p: _set_prop(p, "horizon", "30"))
    with pytest.raises(ModelError, match=r"output 'pred': expected shape \[batch, 30, 2\], found \[batch, 12, 2\]"):
        StepModel(path)


def test_a_fixed_batch_axis_is_refused(lstm: tuple[Path, ModelMeta], tmp_path: Path) -> None:
    def fix_batch(proto: onnx.ModelProto) -> None:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1

    path = _edited(lstm[0], tmp_path / "fixed.onnx", fix_batch)
    with pytest.raises(ModelError, match=r"input 'x': dim 0 is fixed at 1, expected a dynamic batch axis"):
        StepModel(path)


def test_wrong_input_names_are_listed(gru: tuple[Path, ModelMeta], tmp_path: Path) -> None:
    # A GRU graph described as an LSTM: the graph lacks the c input.
    path = _edited(gru[0], tmp_path / "names.onnx", lambda p: _set_prop(p, "cell", "lstm"))
    with pytest.raises(ModelError, match=r"graph inputs: expected \['x', 'h', 'c'\], found \['x', 'h'\]"):
        StepModel(path)


def test_providers_default_to_the_available_ones_in_order_and_unknown_ones_are_refused(
    lstm: tuple[Path, ModelMeta],
) -> None:
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = default_providers()
    assert chosen == [p for p in order if p in chosen] and chosen[-1] == "CPUExecutionProvider"
    with pytest.raises(ModelError, match=r"providers: expected a non-empty subset of .*found \['NoSuchExecutionProvider'\]"):
        StepModel(lstm[0], providers=["NoSuchExecutionProvider"])
    assert StepModel(lstm[0], providers=["CPUExecutionProvider"], threads=2).providers == ["CPUExecutionProvider"]


# --------------------------------------------------------------------------------------------------
# torch-free


def test_a_running_graph_process_works_without_torch_or_onnx_and_never_imports_them(lstm: tuple[Path, ModelMeta]) -> None:
    code = f"""
import sys

class NoTrainExtra:  # behave like the runtime install: torch and onnx are not there at all
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx"):
            raise ModuleNotFoundError(f"No module named {{name!r}} (runtime install)", name=name)
        return None

sys.meta_path.insert(0, NoTrainExtra())
import numpy as np
import pipeline, nodes
import export.runtime.step_model
import pkgutil, importlib
for pkg in (pipeline, nodes):
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # a module a colleague is still writing: torch is what we look for
            if "torch" in str(exc):
                raise
model = export.runtime.step_model.StepModel({str(lstm[0])!r})
pred, state = model.step(np.zeros((2, model.meta.input_dim), np.float32), model.zero_state(2))
assert pred.shape == (2, 12, 2)
bad = [m for m in ("torch", "onnx") if m in sys.modules]  # the runtime install has neither
print("IMPORTED:", bad)
sys.exit(1 if bad else 0)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metadata_reads_like_a_mapping_too(lstm: tuple[Path, ModelMeta]) -> None:
    meta = StepModel(lstm[0]).meta
    assert meta["features"] is meta.features and meta["horizon"] == 12
    assert meta.get("metrics") == meta.metrics and meta.get("nope", 3) == 3
    with pytest.raises(KeyError):
        meta["nope"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)
_pos = st.integers(1, 4096)


@settings(max_examples=60, deadline=None)
@given(
    cell=st.sampled_from(["lstm", "gru"]), sizes=st.tuples(_pos, _pos, _pos, _pos, _pos),
    dt_s=st.floats(1e-6, 1e3, allow_nan=False), dicts=st.tuples(*[st.dictionaries(st.text(max_size=6), _json,
                                                                              max_size=4)] * 4),
    agent=st.none() | st.sampled_from(["pedestrian", "vehicle"]), precision=st.sampled_from(["fp32", "int8", "fp16"]),
)
def test_any_metadata_round_trips_through_props(cell, sizes, dt_s, dicts, agent, precision) -> None:  # type: ignore[no-untyped-def]
    layers, hidden, input_dim, horizon, obs_len = sizes
    meta = ModelMeta(kind="trajectory", cell=cell, layers=layers, hidden=hidden, input_dim=input_dim,
                     horizon=horizon, obs_len=obs_len, dt_s=dt_s, features=dicts[0], training_data=dicts[1],
                     metrics=dicts[2], config=dicts[3], version="0.1.0", content_hash="sha256:00",
                     agent_type=agent, precision=precision)
    props = meta.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert ModelMeta.from_props(props) == meta


SHIPPED = sorted((ROOT / "models" / "pretrained").glob("*.onnx")) + sorted(
    (ROOT / "models" / "pretrained" / "eth_ucy").glob("*.onnx"))   # the per-fold ETH/UCY models


@pytest.mark.skipif(not SHIPPED, reason="no exported models in models/pretrained yet")
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_each_shipped_model_loads_steps_and_has_its_model_card_section(path: Path) -> None:
    model = StepModel(path)
    pred, state = model.step(np.zeros((3, model.meta.input_dim), np.float32), model.zero_state(3))
    assert pred.shape == (3, model.meta.horizon, 2) and np.isfinite(pred).all()
    assert model.meta.metrics and model.meta.training_data and model.meta.weights_hash
    card = (ROOT / "models" / "pretrained" / "MODEL_CARD.md").read_text()
    if path.parent.name == "eth_ucy":   # one table for the five: a row each, with the fold it leaves out
        fold = path.name.split(".")[0]
        assert f"| eth_ucy/{path.name} | {fold} |" in card
        data = model.meta.training_data
        assert data.get("fold") == fold
        test_scenes = {"eth": ["biwi_eth"], "hotel": ["biwi_hotel"], "univ": ["students001", "students003"],
                       "zara1": ["crowds_zara01"], "zara2": ["crowds_zara02"]}[fold]
        seen = data["train_files"] + data["val_files"]
        assert seen and not [f for f in seen for scene in test_scenes if f.startswith(scene)], seen
        return
    stem = path.name.split(".")[0]
    assert f"<!-- drivecast-export: {stem}.onnx -->" in card and f"| {path.name} | {model.meta.precision} |" in card
