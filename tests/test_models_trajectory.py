"""models/trajectory.py: the step contract, learning, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.trajectory import (
    CheckpointError,
    ModelConfig,
    TrajectoryModel,
    average_models,
    load_checkpoint,
    save_checkpoint,
)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_unrolled_forward_equals_stepping_one_sample_at_a_time(cell: str, layers: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, input_dim=7, hidden=16, layers=layers, horizon=5)
    model = TrajectoryModel(cfg).eval()
    x = torch.randn(3, 11, 7)
    with torch.no_grad():
        full, logit, h_full, c_full = model(x)
        full = full[:, :, 0]
        h, c = model.zero_state(3)
        steps = []
        for s in range(x.shape[1]):
            pred, h, c = model.step(x[:, s], h, c)
            steps.append(pred)
    assert full.shape == (3, 11, 5, 2) and logit.shape == (3, 11, 1)
    assert (full - torch.stack(steps, 1)).abs().max().item() <= 1e-6
    assert (h_full - h).abs().max().item() <= 1e-6
    assert (c is None) == (cell == "gru") == (c_full is None)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_averaged_model_predicts_the_mean_of_its_members_and_their_mirror_images(cell: str, layers: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, input_dim=6, hidden=8, layers=layers, horizon=4)
    members = [TrajectoryModel(cfg).eval() for _ in range(3)]
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    x = torch.randn(5, 9, 6)
    with torch.no_grad():
        for mirror in (None, sign):
            avg = average_models(members, mirror)
            refs = [m(x)[0][:, :, 0] for m in members]
            if mirror is not None:
                refs += [m(x * mirror)[0][:, :, 0] * torch.tensor([1.0, -1.0]) for m in members]
            want = torch.stack(refs).mean(0)
            got, _, h, _ = avg(x)
            got = got[:, :, 0]
            assert avg.cfg.hidden == 8 * len(refs)
            assert h.shape == (layers, 5, 8 * len(refs))
            assert (got - want).abs().max().item() <= 1e-5
            # the state keeps the members apart: stepping equals the unrolled mean too
            state = avg.zero_state(5)
            for s in range(x.shape[1]):
                step, *state = avg.step(x[:, s], *state)
            assert (step - want[:, -1]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="same cell"):
        average_models([members[0], TrajectoryModel(ModelConfig(cell=cell, input_dim=6, hidden=4, layers=layers))])


def test_tiny_model_overfits_a_tiny_set() -> None:
    from models.train import masked_ade_loss

    torch.manual_seed(0)
    cfg = ModelConfig(cell="lstm", input_dim=4, hidden=32, horizon=3)
    model = TrajectoryModel(cfg)
    x = torch.randn(4, 6, 4)
    y = torch.randn(4, 6, 3, 2)
    m = torch.ones(4, 6, 3)
    m[0, -2:] = 0   # masked cells must not count
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(400):
        loss = masked_ade_loss(model(x)[0][:, :, 0], y, m)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert loss.item() < 0.05 * first


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(cell="gru", input_dim=5, hidden=8, horizon=4, features={"name": "disp_nbr"})
    model = TrajectoryModel(cfg)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, cfg, {"ade": 1.0}, {"dataset": "x"})
    back, cfg2, blob = load_checkpoint(path)
    assert cfg2 == cfg and blob["metrics"] == {"ade": 1.0} and not back.training
    x = torch.randn(2, 3, 5)
    assert torch.equal(back(x)[0], model(x)[0])


def test_missing_or_corrupt_checkpoint_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"gone\.pt.*does not exist"):
        load_checkpoint(tmp_path / "gone.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*not a readable"):
        load_checkpoint(bad)


def test_unknown_cell_is_refused() -> None:
    with pytest.raises(ValueError, match="cell='rnn'"):
        TrajectoryModel(ModelConfig(cell="rnn"))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_multimodal_step_gives_every_future_and_step_the_most_probable_one(cell: str) -> None:
    torch.manual_seed(0)
    model = TrajectoryModel(ModelConfig(cell=cell, input_dim=6, hidden=8, horizon=4, modes=3)).eval()
    x = torch.randn(5, 7, 6)
    with torch.no_grad():
        full, logit, _, _ = model(x)
        state = model.zero_state(5)
        for s in range(x.shape[1]):
            modes, lg, *after = model.step_modes(x[:, s], *state)
            best, *state = model.step(x[:, s], *state)
            assert all(torch.equal(a, b) for a, b in zip(after, state, strict=True) if a is not None)
            assert (modes - full[:, s]).abs().max().item() <= 1e-6 and (lg - logit[:, s]).abs().max().item() <= 1e-6
            want = modes[torch.arange(5), lg.argmax(-1)]
            assert torch.equal(best, want)
    assert full.shape == (5, 7, 3, 4, 2) and logit.shape == (5, 7, 3)
    assert len({round(v, 4) for v in logit[0, -1].tolist()}) == 3   # the modes are not one future thrice
    with pytest.raises(ValueError, match="cannot be averaged"):
        average_models([model, model])


def test_winner_takes_all_trains_the_closest_future_and_the_probabilities() -> None:
    from models.train import masked_ade_loss, modes_loss

    # two rows whose truths are far apart: one future each, and the logits learn which
    torch.manual_seed(0)
    pred = torch.zeros(2, 2, 3, 2, requires_grad=True)
    logit = torch.zeros(2, 2, requires_grad=True)
    y = torch.stack([torch.full((3, 2), 5.0), torch.full((3, 2), -5.0)])
    m = torch.ones(2, 3)
    with torch.no_grad():
        pred[0, 0] += 4.0    # row 0: mode 0 is closer; row 1: mode 1 is
        pred[1, 1] -= 4.0
    modes_loss(pred, logit, y, m).backward()
    assert pred.grad[0, 1].abs().sum() == 0 and pred.grad[1, 0].abs().sum() == 0   # losers are left alone
    assert pred.grad[0, 0].abs().sum() > 0 and pred.grad[1, 1].abs().sum() > 0
    assert logit.grad[0, 0] < 0 < logit.grad[0, 1] and logit.grad[1, 1] < 0 < logit.grad[1, 0]
    # K=1 is the plain masked ADE
    one = torch.randn(4, 1, 3, 2)
    assert torch.equal(modes_loss(one, torch.zeros(4, 1), y[:1].expand(4, 3, 2), m[:1].expand(4, 3)),
                       masked_ade_loss(one[:, 0], y[:1].expand(4, 3, 2), m[:1].expand(4, 3)))
