"""nodes/eval_table.py: age buckets, the "model vs CV" wording, first-seen memory, the accuracy table and its
JSON report; and `drivecast eval` (models/evaluate.py) bucketing its windows with the same function."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from nodes.eval_table import AGE_BUCKETS, AccuracyTable, FirstSeen, age_bucket, vs_cv, write_report
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_age_buckets_include_their_lower_bound() -> None:
    ages = np.array([-1.0, 0.0, 4.999, 5.0, 19.99, 20.0, 59.9, 60.0, 3600.0])
    assert [AGE_BUCKETS[i] for i in age_bucket(ages)] == ["0-5", "0-5", "0-5", "5-20", "5-20", "20-60", "20-60",
                                                          "60+", "60+"]


@pytest.mark.parametrize(("model", "cv", "words"), [
    (0.82, 1.0, "18% better"), (1.07, 1.0, "7% worse"), (1.004, 1.0, "same"), (0.0, 0.0, "same"),
    (0.5, 0.0, "worse"), (float("nan"), 1.0, "-")])
def test_the_comparison_with_constant_velocity_is_in_words_never_a_signed_percentage(
        model: float, cv: float, words: str) -> None:
    assert vs_cv(model, cv) == words


def test_first_seen_forgets_agents_absent_for_longer_than_its_window() -> None:
    seen = FirstSeen(forget_s=10.0)
    seen.see(0, np.array([3, 1, 1]))           # unsorted, repeated ids
    seen.see(4 * 10**9, np.array([1, 2]))
    age, known = seen.age_s(np.array([1, 2, 3, 9]), 6 * 10**9)
    assert age.tolist() == [6.0, 2.0, 6.0, 0.0] and known.tolist() == [True, True, True, False]
    seen.see(12 * 10**9, np.array([1]))        # 3 last seen at 0 s: forgotten; 2 (4 s) kept
    seen.see(13 * 10**9, np.array([3]))        # back: a new life
    age, known = seen.age_s(np.array([1, 2, 3]), 14 * 10**9)
    assert age.tolist() == [14.0, 10.0, 1.0] and known.all()


def test_first_seen_keeps_at_most_cap_agents_the_most_recently_seen() -> None:
    seen = FirstSeen(forget_s=1e6, cap=100)
    for i in range(50):
        seen.see(i, np.arange(10 * i, 10 * i + 10))  # 500 distinct ids, never forgotten by time
    assert len(seen.ids) == 100
    _, known = seen.age_s(np.array([0, 399, 400, 499]), 50)
    assert known.tolist() == [False, False, True, True]
    seen.see(50, np.arange(1000, 1300))  # more new ids in one message than the cap
    assert len(seen.ids) == 100 and (seen.last == 50).all()


def _table() -> AccuracyTable:
    """Vehicles 0-5 s: model 0.8 m, CV 1.0 m (k=1) or 2.0 m (k=2); pedestrians 60+ s: model 1.25 m, CV 1.0 m."""
    t = AccuracyTable([1, 2])
    err = np.array([[0.8, 0.8], [1.25, 1.25]])
    cv = np.stack([np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([[2.0, 2.0], [2.0, 2.0]])])
    t.add(np.array(["vehicle", "pedestrian"], object), np.array([0, 3]), err, cv)
    t.add(np.array(["vehicle"], object), np.array([-1]), err[:1], cv[:, :1])  # unknown age: kind rows only
    return t


def test_the_table_has_every_kind_and_age_with_rows_and_words_the_comparison_one_way() -> None:
    t = _table()
    assert [(r["kind"], r["age"], r["n"]) for r in t.rows()] == [
        ("pedestrian", "all", 1), ("pedestrian", "60+", 1), ("vehicle", "all", 2), ("vehicle", "0-5", 1),
        ("all", "all", 3), ("all", "0-5", 1), ("all", "60+", 1)]
    text = t.text()
    lines = text.splitlines()
    assert re.fullmatch(r"pedestrian +1 +1\.250 +1\.250 +1 +1\.000 +1\.000 +25% worse +25% worse", lines[2])
    assert re.fullmatch(r"  60\+ s +1 +1\.250 +1\.250 +1 +1\.000 +1\.000 +25% worse +25% worse", lines[3])
    assert re.fullmatch(r"vehicle +2 +0\.800 +0\.800 +1 +1\.000 +1\.000 +20% better +20% better", lines[4])
    assert re.fullmatch(r"  0-5 s +1 +0\.800 +0\.800 +1 +1\.000 +1\.000 +20% better +20% better", lines[5])
    assert "CV k: constant velocity" in text and "the best of cv_ks [1, 2] for each row" in text
    assert not re.search(r"[+-]\d+%", text)


def test_the_report_is_replaced_atomically_and_holds_no_nan(tmp_path: Path) -> None:
    path = tmp_path / "acc.json"
    path.write_text("old")
    t = _table()
    t.by_kind["cyclist"] = t._score(t.by_kind, "cyclist")  # a kind without rows: no row, no NaN
    write_report(path, t.rows())
    doc = json.loads(path.read_text())
    assert list(doc) == ["rows"] and len(doc["rows"]) == 7
    assert doc["rows"][3] == {"kind": "vehicle", "age": "0-5", "n": 1, "ade": 0.8, "fde": 0.8, "cv_ade": 1.0,
                              "cv_fde": 1.0, "cv_k": 1}
    assert os.listdir(tmp_path) == ["acc.json"]


def test_a_report_that_cannot_be_written_names_the_param_and_path_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "acc.json"
    with pytest.raises(ConfigError, match=rf"^report_json: cannot write '{path}': No such file or directory$"):
        write_report(path, [])
    assert os.listdir(tmp_path) == []


# -- drivecast eval ---------------------------------------------------------------------------------------------

def _long_walkers(root: Path) -> None:
    """ETH/UCY layout, 0.4 s frames: pedestrian 0 walks for 80 s from 0 s, pedestrian 1 for 16 s from 30 s."""
    rows = []
    for ped, start, n in ((0, 0, 200), (1, 75, 40)):
        for j in range(n):
            rows.append((10 * (start + j), ped, 0.5 * j, 3.0 * ped + 0.1 * np.sin(j / 5)))
    rows.sort()
    path = root / "zz" / "test" / "walk_test.txt"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"{f:.1f}\t{i:.1f}\t{x:.4f}\t{y:.4f}\n" for f, i, x, y in rows))


def test_drivecast_eval_reports_windows_by_agent_age_with_the_nodes_buckets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models import evaluate

    _long_walkers(tmp_path / "eth_ucy")
    report = tmp_path / "eval.json"
    model = REPO / "models" / "pretrained" / "pedestrian_lstm.onnx"
    rc = evaluate.main([str(model), "--dataset", "eth_ucy", "--data", str(tmp_path / "eth_ucy"), "--fold", "zz",
                        "--split", "test", "--cv-k", "1", "--json", str(report)])
    assert rc == 0
    res = json.loads(report.read_text())
    # windows of 8 observed + 12 future samples at 0.4 s end at sample e of an agent, age 0.4 e s: pedestrian 0
    # e = 7..187 (0-5 s: 7..12, 5-20: 13..49, 20-60: 50..149, 60+: 150..187); pedestrian 1 e = 7..27 from its
    # own first sample (0-5 s: 7..12, 5-20: 13..27)
    expected = {"0-5": 6 + 6, "5-20": 37 + 15, "20-60": 100, "60+": 38}
    assert {a: r["model"]["n"] for a, r in res["per_age"].items()} == expected
    assert list(res["per_age"]) == list(AGE_BUCKETS)
    for name in ("model", "stream", "cv"):
        n = sum(r[name]["n"] for r in res["per_age"].values())
        ade = sum(r[name]["ade"] * r[name]["n"] for r in res["per_age"].values()) / n
        assert n == res[name]["n"] and ade == pytest.approx(res[name]["ade"], rel=1e-9)
    out = capsys.readouterr().out
    assert re.search(r"^age +n +model ADE/FDE +stream ADE/FDE +cv ADE/FDE +model vs CV, ADE +stream vs CV, ADE$",
                     out, re.M), out
    assert re.search(r"^60\+ +38 .* \d+% (better|worse) +\d+% (better|worse)$", out, re.M), out
    assert "CV k: constant velocity (CV) from the mean velocity over the last k sample periods" in out


def test_k_futures_are_scored_by_the_one_whose_end_is_nearest() -> None:
    from nodes.eval_table import mode_errors

    # row 0: future 1 ends nearest (its mean error is not the least); row 1: every future misses by 3 m
    d = np.array([[[0.1, 0.1, 2.5], [1.0, 1.0, 1.0]], [[3.0, 3.0, 3.0], [3.0, 3.0, 3.5]]])
    prob = np.array([[0.75, 0.25], [0.5, 0.5]])
    got = mode_errors(d, prob)
    np.testing.assert_allclose(got["min_fde_k"], [1.0, 3.0])
    np.testing.assert_allclose(got["min_ade_k"], [1.0, 3.0])
    np.testing.assert_array_equal(got["miss_k"], [0.0, 1.0])
    np.testing.assert_allclose(got["brier_min_fde_k"], [1.0 + 0.75 ** 2, 3.0 + 0.25])


def test_rows_of_models_with_different_k_report_each_k_and_rows_without_futures_none() -> None:
    from nodes.eval_table import mode_table

    t = AccuracyTable([1, 2])
    err, cv = np.ones((2, 3)), np.zeros((2, 2, 3))
    d6, d3 = np.ones((2, 6, 3)), np.ones((2, 3, 3))
    t.add(np.array(["vehicle"] * 2, object), np.array([0, 0]), err, cv, mode_table(d6, np.full((2, 6), 1 / 6)),
          mode_table(cv.transpose(1, 0, 2), np.full((2, 2), 0.5)), 6)
    t.add(np.array(["pedestrian"] * 2, object), np.array([0, 0]), err, cv, mode_table(d3, np.full((2, 3), 1 / 3)),
          mode_table(cv.transpose(1, 0, 2), np.full((2, 2), 0.5)), 3)
    t.add(np.array(["cyclist"] * 2, object), np.array([0, 0]), err, cv)  # a model of one future
    rows = {(r["kind"], r["age"]): r for r in t.rows()}
    assert (rows[("vehicle", "all")]["k"], rows[("pedestrian", "all")]["k"], rows[("all", "all")]["k"]) == (6, 3, [3, 6])
    assert (rows[("all", "all")]["n"], rows[("all", "all")]["n_k"]) == (6, 4)  # K figures over the rows that had K
    assert "n_k" not in rows[("cyclist", "all")]
    assert rows[("all", "all")]["brier_min_fde_k"] == pytest.approx(1 + ((5 / 6) ** 2 + (2 / 3) ** 2) / 2, abs=1e-4)
    assert re.search(r"^all +4 +3,6 +1\.000 +1\.000 +0% ", t.text(), re.M), t.text()
    assert mode_table(np.zeros((0, 6, 3)), np.zeros((0, 6))).shape == (0, 4)
