"""The model card section that `drivecast export ... --card` writes for an exported model and its variants.

A section says what the model is, what it was trained on, how well it does and the exact export
command, with a table of each file's parity against torch (and, given the dataset, its val ADE/FDE).
Sections sit between markers, so a re-export replaces its own section and leaves the rest of the card alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.runtime.step_model import StepModel
from export.torch_export.parity import max_abs_diff
from export.torch_export.verify import dataset_change

__all__ = ["card_section", "update_card"]

_CARD_HEADING = "## ONNX exports"
_CARD_INTRO = (
    "Written by `drivecast export ... --card` (export/torch_export/onnx_export.py); each section says the exact command.\n"
    "`NAME.onnx` is fp32, equal to the checkpoint within 1e-4 (`drivecast verify`); `NAME.int8.onnx` quantises the\n"
    "LSTM (onnxruntime dynamic quantisation, head kept fp32); `NAME.fp16.onnx` halves the file (fp16\n"
    "compute on GPU providers; on CPU onnxruntime computes the LSTM in fp32). \"point shift\" is the mean\n"
    "distance between the variant's predicted points and torch's, on the validation split.\n"
)


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
        (f"- Model: {m.cell.upper()} {m.input_dim}->{m.hidden}x{m.layers} + linear head, predicts "
        + (f"K={m.modes} futures with probabilities, " if m.modes > 1 else "") + f"T={m.horizon} "
        f"steps at dt={m.dt_s} s (window protocol: {m.obs_len} observed); features "
        f"`{f.get('name')}` v{f.get('version')} ({feat})."),
        f"- Trained on: {data.get('dataset', '?')}"
        + (f" fold {data['fold']}" if data.get("fold") else "")
        + (f", seed {data['seed']}" if "seed" in data else "")
        + (f", {len(data['train_files'])} train files" if isinstance(data.get("train_files"), list) else "")
        + (f"; command `{met['command']}`" if met.get("command") else ""),
        (f"- Validation ({met.get('dataset', data.get('dataset', '?'))} {met.get('split', 'val')}, "
        f"n={met.get('model', {}).get('n', '?')}, meters, "
        + ("K=1" if m.modes == 1 else "the most probable future") + f"): window ADE/FDE {_ade_fde(met.get('model'))}, "
        f"streaming {_ade_fde(met.get('stream'))}, constant velocity (k={met.get('cv_k', '?')}) "
        f"{_ade_fde(met.get('cv'))}"
        + (f"; K={m.modes}, window minADE/minFDE {_min_ade_fde(met.get('model'))} (miss rate "
           f"{met.get('model', {}).get('miss_rate_k', float('nan')):.3f}), constant velocity's variants "
           f"{_min_ade_fde(met.get('cv'))}" if m.modes > 1 else "") + "."),
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
            res = dataset_change(step_model, model, cfg, str(data.get("dataset")), data_dir,
                                 str(met.get("split", "val")), data.get("fold"))
            for r in res.values():
                row += (f" {r['torch_ade']:.4f}/{r['torch_fde']:.4f} -> "
                        f"{r['onnx_ade']:.4f}/{r['onnx_fde']:.4f} |")
            row += f" {res['model']['shift_mean_m']:.1e} / {res['model']['shift_max_m']:.1e} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _min_ade_fde(r: dict | None) -> str:
    return f"{r['min_ade_k']:.3f}/{r['min_fde_k']:.3f}" if r and "min_ade_k" in r else "?"


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
