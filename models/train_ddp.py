"""`drivecast train --workers N`: one model trained data-parallel on N Ray Train workers.

Ray Train's TorchTrainer starts the workers and their process group (gloo on CPU); each worker
runs `models.train.fit` with a `Shard`. Every worker loads the same data and draws the same
batches from the one seed, pads each batch whole and keeps its rows `rank::N`, so every worker
runs the same number of truncated-BPTT chunks: DistributedDataParallel averages the gradients in
each backward pass, and a worker with one chunk fewer would leave the others waiting for ever.
Worker 0 validates, writes the checkpoint and metrics where a one-process run writes them, and
decides when to stop; the others follow. What it prints goes to OUT/train.log, which this command
shows as it grows (Ray's own worker logs stay in Ray's log directory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from models.train_config import TrainConfig, TrainError, parse_config
from models.train_sweep import start_ray

__all__ = ["Shard", "train_data_parallel"]


@dataclasses.dataclass
class Shard:
    """This worker's part of a data-parallel run."""

    rank: int
    world: int
    steps: int = 0  # optimiser steps taken: the same on every worker, or DDP would have waited for ever

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def rows(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This worker's rows of a batch that every worker padded alike."""
        return tuple(t[self.rank::self.world] for t in batch)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as DistributedDataParallel (worker 0's initial weights on every worker)."""
        from ray.train.torch import prepare_model
        return prepare_model(model)

    def gather(self, value: int) -> list[int]:
        """`value` of every worker, in rank order."""
        out = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
        dist.all_gather(out, torch.tensor([value]))
        return [int(t.item()) for t in out]

    def agree(self, flag: bool) -> bool:
        """Whether any worker (worker 0, who decides) said so."""
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


Fit = Callable[[TrainConfig, list[str], "Shard | None"], int]


def train_data_parallel(cfg: TrainConfig, argv: list[str], out: Path, fit: Fit) -> int:
    """Run `argv` (one run) as `fit` on `cfg.workers` Ray Train workers; the exit code."""
    ray, started = start_ray(None if cfg.ray in (None, "local") else cfg.ray, cfg.workers, log_to_driver=False)
    log = out.absolute() / "train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    failed: list[BaseException] = []
    try:
        try:
            from ray.train import RunConfig, ScalingConfig
            from ray.train.torch import TorchTrainer
        except ImportError as exc:  # ray without its [train] extra
            raise TrainError(f"--workers needs Ray Train: pip install 'drivecast[fleet]' ({exc})", 2) from None
        trainer = TorchTrainer(
            _worker, train_loop_config={"argv": argv, "cwd": str(Path.cwd()), "fit": fit, "log": str(log)},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=False),
            run_config=RunConfig(name="ray_train", storage_path=str(out.absolute())))

        def run() -> None:
            try:
                trainer.fit()
            except Exception as exc:  # Ray's TrainingFailedError wraps what a worker raised
                failed.append(exc)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        _follow(log, thread)
    finally:
        if started:
            ray.shutdown()
    if failed:
        # Ray's WorkerGroupError carries each worker's exception: the first one's reason, not its traceback
        why = next(iter(getattr(failed[0], "worker_failures", {}).values()), failed[0])
        raise TrainError(f"data-parallel training on {cfg.workers} workers failed: {_reason(why)}", 1)
    return 0


def _reason(exc: BaseException) -> str:
    """The last line of what a worker raised (Ray wraps it, with the remote traceback above)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("ERROR: ") if lines else type(exc).__name__


def _follow(log: Path, thread: threading.Thread) -> None:
    """Print what worker 0 writes to `log` as it comes, until `thread` (the training) ends."""
    with log.open() as f:
        while True:
            alive = thread.is_alive()
            text = f.read()
            if text:
                print(text, end="", flush=True)
            if not alive:
                return
            thread.join(0.2)  # wakes at once when training ends; else look at the log again


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the ordinary run, on this worker's shard."""
    import os

    import ray.train

    os.chdir(config["cwd"])  # relative --data and --out as the command line meant them
    ctx = ray.train.get_context()
    shard = Shard(ctx.get_world_rank(), ctx.get_world_size())
    errors = io.StringIO()  # what the run says went wrong: the reason the driver prints
    with contextlib.ExitStack() as stack:
        if shard.lead:
            out = stack.enter_context(open(config["log"], "a", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(errors))
        code = config["fit"](parse_config(config["argv"]), config["argv"], shard)
    if code:
        raise RuntimeError(errors.getvalue().strip() or f"exit code {code}")
