"""A predictor's model files are checked with its params, before any process starts (issue 24, item 8):
graph input/output names, dtypes and shapes, plausible ranges on the declared dimensions, the feature spec
against the input width, and the memory of the agent state table. The bad models are the shipped vehicle
model edited with the `onnx` package (graph names and shapes, metadata_props): no torch needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from export.runtime.step_model import ModelError, ModelMeta
from nodes.predictor import Predictor
from nodes.state_table import AgentTable
from pipeline.errors import ConfigError
from pipeline.runtime.graph import load_graph
from pipeline.runtime.local import LocalGraph
from tests.conftest import REPO

onnx = pytest.importorskip("onnx")

VEHICLE = REPO / "models" / "pretrained" / "vehicle_lstm.onnx"  # x[B,44], h/c[1,B,112] -> pred[B,30,2], ...
Edit = Callable[["onnx.ModelProto"], None]


def edited(tmp_path: Path, edit: Edit, name: str = "m.onnx") -> Path:
    proto = onnx.load(str(VEHICLE))
    edit(proto)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


def set_prop(key: str, value: str) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        props = {p.key: p.value for p in proto.metadata_props}
        props[key] = value
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, props)
    return edit


def set_feature(key: str, value: object) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        prop = next(p for p in proto.metadata_props if p.key == "features")
        spec = json.loads(prop.value)
        spec[key] = value
        prop.value = json.dumps(spec, sort_keys=True)
    return edit


def rename(old: str, new: str) -> Edit:
    """Rename a graph input or output everywhere it is used: the graph stays valid, only the name differs."""
    def edit(proto: onnx.ModelProto) -> None:
        for vi in [*proto.graph.input, *proto.graph.output]:
            if vi.name == old:
                vi.name = new
        for node in proto.graph.node:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]
    return edit


def renames(*pairs: tuple[str, str]) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        for old, new in pairs:
            rename(old, new)(proto)
    return edit


def set_dim(io: str, index: int, dim: int, value: int) -> Edit:
    def edit(proto: onnx.ModelProto) -> None:
        arg = getattr(proto.graph, io)[index]
        arg.type.tensor_type.shape.dim[dim].dim_value = value
    return edit


def double_x(proto: onnx.ModelProto) -> None:
    """Make the graph take x as float64, cast to float32 inside: it loads, only the input dtype differs."""
    rename("x", "x_float")(proto)
    proto.graph.input[0].name = "x"
    proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    proto.graph.node.insert(0, onnx.helper.make_node("Cast", ["x"], ["x_float"], to=onnx.TensorProto.FLOAT))


def write_launch(tmp_path: Path, model: Path | str, capacity: int | None = None) -> Path:
    extra = "" if capacity is None else f", capacity: {capacity}"
    path = tmp_path / "launch.yaml"
    path.write_text(f"nodes:\n  pred:\n    run: nodes.predictor:Predictor\n"
                    f"    params: {{models: {{vehicle: {model}}}{extra}}}\n")
    return path


# (what is wrong, the edit, the error after `<model path>: `)
BAD_MODELS = [
    ("renamed inputs", renames(("h", "h0"), ("c", "c0")),
     "graph inputs: expected ['x', 'h', 'c'], found ['x', 'h0', 'c0']"),
    ("renamed output", rename("pred", "prediction"),
     "graph outputs: expected ['pred', 'h_out', 'c_out'], found ['prediction', 'h_out', 'c_out']"),
    ("float64 input", double_x, "input 'x': expected tensor(float), found tensor(double)"),
    ("absurd hidden", set_prop("hidden", str(10**9)),
     "metadata key 'hidden': expected a positive int <= 4096, found '1000000000'"),
    ("absurd layers", set_prop("layers", str(10**6)),
     "metadata key 'layers': expected a positive int <= 16, found '1000000'"),
    ("absurd horizon", set_prop("horizon", str(10**9)),
     "metadata key 'horizon': expected a positive int <= 1000, found '1000000000'"),
    ("absurd input_dim", set_prop("input_dim", str(10**9)),
     "metadata key 'input_dim': expected a positive int <= 4096, found '1000000000'"),
    ("absurd obs_len", set_prop("obs_len", str(10**9)),
     "metadata key 'obs_len': expected a positive int <= 10000, found '1000000000'"),
    ("tiny dt_s", set_prop("dt_s", "1e-12"),
     "metadata key 'dt_s': expected a float from 0.001 to 60 (seconds), found '1e-12'"),
    ("huge dt_s", set_prop("dt_s", "1e9"),
     "metadata key 'dt_s': expected a float from 0.001 to 60 (seconds), found '1000000000.0'"),
    ("absurd fixed state dim", set_dim("input", 1, 2, 10**9),
     "input 'h': expected shape [1, batch, 112], found [1, batch, 1000000000]"),
    ("absurd fixed batch dim", set_dim("input", 2, 1, 10**9),
     "input 'c': dim 1 is fixed at 1000000000, expected a dynamic batch axis (shape [1, batch, 112])"),
    ("absurd fixed horizon dim", set_dim("output", 0, 1, 10**9),
     "output 'pred': expected shape [batch, 30, 2], found [batch, 1000000000, 2]"),
    ("features wider than the input", set_feature("history", 9),
     "features give 47 inputs, the model takes 44"),
    ("unknown feature spec", set_feature("version", 99),
     "feature spec name/version 'disp_nbr'/99: expected 'disp_nbr'/1 to 2"),
    ("infinite feature history", set_feature("history", float("inf")),
     "feature spec: cannot convert float infinity to integer"),
    ("absurd heading look-back", set_feature("heading_lookback", 10**9),
     "state table: expected at most 1 GiB per model, found capacity 256 x 16000000968 bytes per agent "
     "(state 2 x 1 x 112 float32, history 1000000001 x 2 float64) = 3.73 TiB"),
]


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in BAD_MODELS], ids=[c[0] for c in BAD_MODELS])
def test_load_graph_refuses_a_bad_model_naming_node_key_file_and_expectation(
        tmp_path: Path, edit: Edit, message: str) -> None:
    model = edited(tmp_path, edit)
    launch = write_launch(tmp_path, model)
    with pytest.raises(ConfigError) as info:
        load_graph(launch)
    assert str(info.value) == f"{launch}: nodes.pred.params: models.vehicle: {model}: {message}"


def test_an_in_process_graph_refuses_a_bad_model_when_the_node_is_added(tmp_path: Path) -> None:
    model = edited(tmp_path, renames(("h", "h0"), ("c", "c0")))
    with pytest.raises(ConfigError) as info:
        LocalGraph().add("pred", Predictor, {"models": {"vehicle": str(model)}})
    assert str(info.value) == (f"pred: params: models.vehicle: {model}: graph inputs: "
                               "expected ['x', 'h', 'c'], found ['x', 'h0', 'c0']")


def test_a_file_that_is_no_onnx_model_is_refused_by_load_graph(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x00not an onnx model\xff" * 50)
    launch = write_launch(tmp_path, model)
    with pytest.raises(ConfigError, match=rf"^{launch}: nodes\.pred\.params: models\.vehicle: {model}: "
                                          r"not a loadable ONNX model: "):
        load_graph(launch)


def test_a_model_without_drivecast_metadata_is_refused_by_load_graph(tmp_path: Path) -> None:
    model = edited(tmp_path, lambda p: p.metadata_props.__delitem__(slice(None)))
    launch = write_launch(tmp_path, model)
    with pytest.raises(ConfigError, match=rf"^{launch}: nodes\.pred\.params: models\.vehicle: {model}: "
                                          r"no drivecast metadata"):
        load_graph(launch)


def test_a_capacity_whose_state_table_would_not_fit_is_refused_with_its_size(tmp_path: Path) -> None:
    launch = write_launch(tmp_path, VEHICLE, capacity=10**9)
    with pytest.raises(ConfigError) as info:
        load_graph(launch)
    assert str(info.value) == (
        f"{launch}: nodes.pred.params: models.vehicle: {VEHICLE}: state table: expected at most 1 GiB per model, "
        "found capacity 1000000000 x 1272 bytes per agent (state 2 x 1 x 112 float32, history 20 x 2 float64) "
        "= 1.16 TiB")


def test_the_shipped_launch_file_and_a_large_table_within_the_limit_load(tmp_path: Path) -> None:
    g = load_graph(REPO / "launch.yaml")
    assert set(g.nodes["predictor"].params.models) == {"vehicle", "pedestrian"}
    assert load_graph(write_launch(tmp_path, VEHICLE, capacity=800_000)).nodes["pred"].params.capacity == 800_000


def vehicle_meta(**changes: str) -> ModelMeta:
    props = {p.key: p.value for p in onnx.load(str(VEHICLE)).metadata_props}
    return ModelMeta.from_props({**props, **changes}, "m.onnx")


@pytest.mark.parametrize(("key", "top"), [("layers", 16), ("hidden", 4096), ("input_dim", 4096),
                                          ("horizon", 1000), ("obs_len", 10000)])
def test_a_declared_dimension_at_its_bound_is_accepted_and_one_more_is_not(key: str, top: int) -> None:
    vehicle_meta(**{key: str(top)}).check_limits("m.onnx")
    with pytest.raises(ModelError) as info:
        vehicle_meta(**{key: str(top + 1)}).check_limits("m.onnx")
    assert str(info.value) == f"m.onnx: metadata key {key!r}: expected a positive int <= {top}, found '{top + 1}'"


@pytest.mark.parametrize(("value", "ok"), [("0.001", True), ("60.0", True), ("0.0009", False), ("60.5", False)])
def test_dt_s_is_accepted_from_a_millisecond_to_a_minute(value: str, ok: bool) -> None:
    meta = vehicle_meta(dt_s=value)
    if ok:
        meta.check_limits("m.onnx")
    else:
        with pytest.raises(ModelError, match=rf"^m\.onnx: metadata key 'dt_s': expected a float from 0\.001 to 60 "
                                             rf"\(seconds\), found '{value}'$"):
            meta.check_limits("m.onnx")


def test_drivecast_launch_exits_2_with_one_line_before_any_process_starts(tmp_path: Path, run_base: Path) -> None:
    model = edited(tmp_path, renames(("h", "h0"), ("c", "c0")))
    launch = write_launch(tmp_path, model)
    env = {**os.environ, "DRIVECAST_RUN_DIR": str(run_base)}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "launch", str(launch), "--duration", "30"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (f"ERROR: {launch}: nodes.pred.params: models.vehicle: {model}: graph inputs: "
                           "expected ['x', 'h', 'c'], found ['x', 'h0', 'c0']\n")
    assert list(run_base.iterdir()) == []  # no run directory: no node was started


def test_the_state_table_refuses_a_size_over_the_limit_before_allocating() -> None:
    # 16 TB of history: the code before the bound failed in numpy ("Unable to allocate"), or worse,
    # with a capacity large enough, wrote gigabytes of -1 ids before failing.
    with pytest.raises(ValueError, match=r"^state table: expected at most 1 GiB per model, found capacity 1000 x "
                                         r"16000001080 bytes per agent \(state 2 x 1 x 128 float32, history "
                                         r"1000000000 x 2 float64\) = 14\.6 TiB$"):
        AgentTable(1000, n_state=2, layers=1, hidden=128, hist_len=10**9)


def test_a_damaged_graph_name_is_one_line_with_nothing_printed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # A byte of a node's input name made invalid UTF-8: onnxruntime's error then fails to decode, and by default
    # it prints an "EP Error" banner to stdout and retries on the same CPU provider.
    data = VEHICLE.read_bytes()
    at = data.find(b"\x0eonnx::LSTM_")
    assert at > 0
    model = tmp_path / "m.onnx"
    model.write_bytes(data[:at + 1] + b"\xa9" + data[at + 2:])
    launch = write_launch(tmp_path, model)
    with pytest.raises(ConfigError, match=rf"^{launch}: nodes\.pred\.params: models\.vehicle: {model}: "
                                          r"not a loadable ONNX model: 'utf-8' codec can't decode byte 0xa9"):
        load_graph(launch)
    assert capfd.readouterr().out == ""


def test_metadata_nested_past_the_stack_is_refused_like_any_bad_value(tmp_path: Path) -> None:
    model = edited(tmp_path, set_prop("features", "[" * 100_000))
    launch = write_launch(tmp_path, model)
    with pytest.raises(ConfigError) as info:
        load_graph(launch)
    assert str(info.value) == (f"{launch}: nodes.pred.params: models.vehicle: {model}: metadata key 'features': "
                               f"expected a JSON object, found '{'[' * 57}...'")
