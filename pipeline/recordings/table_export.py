"""Turn one topic of a recording into a flat table (CSV or Parquet) that pandas or polars open
without drivecast: `drivecast bag export FILE --topic T --csv OUT | --parquet OUT`.

One row per agent per message, so a recording is a "long" table that filters and groups directly
(`df[df.id == 3]`, `df.groupby("id")`); a Predictions message gives one row per agent per horizon
step (columns `step`, `t_ns`, `x`, `y`) rather than one wide row per agent, because the horizon
length may differ between models and messages. A message of K futures gives a row per agent per
future per step, `mode` being the future's rank by probability (0: the most probable, the one in
`xy`) and `prob` its probability; a message of one future has `mode` 0 and `prob` 1, so
`df[df["mode"] == 0]` is every agent's most probable future whatever the model.
Every table starts with `log_time_ns` (when the
message was recorded), `stamp_ns` and `seq` (from the message header); times are integer ns.
A message without agents gives no row. Parquet needs pyarrow (`pip install 'drivecast[tables]'`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.errors import ConfigError, DecodeError
from pipeline.recordings.reader import open_recording
from pipeline.wire.codec import decode
from pipeline.wire.messages import AgentKind, Detections, Message, Predictions, Tracks

__all__ = ["COLUMNS", "FORMATS", "export_table"]

FORMATS = ("csv", "parquet")

# schema -> (column, numpy dtype or "str"), in table order
COLUMNS: dict[str, list[tuple[str, str]]] = {
    Tracks.SCHEMA: [("log_time_ns", "int64"), ("stamp_ns", "int64"), ("seq", "int64"), ("frame_id", "str"),
                    ("id", "int64"), ("kind", "uint8"), ("kind_name", "str"),
                    ("x", "float32"), ("y", "float32"), ("vx", "float32"), ("vy", "float32")],
    Detections.SCHEMA: [("log_time_ns", "int64"), ("stamp_ns", "int64"), ("seq", "int64"), ("frame_id", "str"),
                        ("index", "int64"), ("kind", "uint8"), ("kind_name", "str"),
                        ("x", "float32"), ("y", "float32"), ("score", "float32")],
    Predictions.SCHEMA: [("log_time_ns", "int64"), ("stamp_ns", "int64"), ("seq", "int64"), ("model", "str"),
                         ("id", "int64"), ("kind", "uint8"), ("kind_name", "str"),
                         ("step", "int64"), ("t_ns", "int64"), ("x", "float32"), ("y", "float32"),
                         ("mode", "int64"), ("prob", "float32")],
}

_KIND_NAMES = np.array([AgentKind.NAMES.get(k, f"kind{k}") for k in range(256)], dtype=object)


def _head(msg: Message, log_ns: int, n: int) -> dict[str, np.ndarray]:
    return {"log_time_ns": np.full(n, log_ns, np.int64), "stamp_ns": np.full(n, msg.stamp_ns, np.int64),
            "seq": np.full(n, msg.seq, np.int64)}


def _tracks(msg: Tracks, log_ns: int) -> dict[str, np.ndarray]:
    n = len(msg.ids)
    return {**_head(msg, log_ns, n), "frame_id": np.full(n, msg.frame_id, object), "id": msg.ids,
            "kind": msg.kind, "kind_name": _KIND_NAMES[msg.kind], "x": msg.xy[:, 0], "y": msg.xy[:, 1],
            "vx": msg.vxy[:, 0], "vy": msg.vxy[:, 1]}


def _detections(msg: Detections, log_ns: int) -> dict[str, np.ndarray]:
    n = len(msg.xy)
    return {**_head(msg, log_ns, n), "frame_id": np.full(n, msg.frame_id, object), "index": np.arange(n),
            "kind": msg.kind, "kind_name": _KIND_NAMES[msg.kind], "x": msg.xy[:, 0], "y": msg.xy[:, 1],
            "score": msg.score}


def _predictions(msg: Predictions, log_ns: int) -> dict[str, np.ndarray]:
    if msg.modes.shape[1]:
        rank = np.argsort(-msg.prob, axis=1, kind="stable")  # the most probable first
        paths, prob = np.take_along_axis(msg.modes, rank[:, :, None, None], 1), np.take_along_axis(msg.prob, rank, 1)
    else:
        paths, prob = msg.xy[:, None], np.ones((len(msg.xy), 1), np.float32)
    n, k, t = paths.shape[:3]
    rows = n * k * t
    return {**_head(msg, log_ns, rows), "model": np.full(rows, msg.model, object),
            "id": np.repeat(msg.ids, k * t), "kind": np.repeat(msg.kind, k * t),
            "kind_name": np.repeat(_KIND_NAMES[msg.kind], k * t),
            "step": np.tile(np.arange(1, t + 1), n * k), "t_ns": np.tile(msg.t_ns, n * k),
            "x": paths[..., 0].reshape(-1), "y": paths[..., 1].reshape(-1),
            "mode": np.tile(np.repeat(np.arange(k), t), n), "prob": np.repeat(prob.reshape(-1), t)}


_ROWS: dict[str, Callable[[Any, int], dict[str, np.ndarray]]] = {
    Tracks.SCHEMA: _tracks, Detections.SCHEMA: _detections, Predictions.SCHEMA: _predictions}


def _blocks(path: str | Path, topic: str, types_dir: str | Path | None,
            skipped: list[int]) -> Generator[tuple[str, dict[str, np.ndarray]], None, None]:
    """(schema, columns of one message) for each message of `topic`; undecodable messages are counted
    in `skipped[0]` and left out."""
    with open_recording(path, types_dir) as rec:
        info = rec.info()
        schemas = {t.name: t.schema for t in info.topics}
        if topic not in schemas:
            raise ConfigError(f"{path}: no topic {topic!r} (topics: {', '.join(sorted(schemas)) or 'none'})")
        schema = schemas[topic]
        if schema not in _ROWS:
            raise ConfigError(f"{path}: topic {topic!r} is {schema or 'not playable'}; export makes tables of "
                              f"{', '.join(_ROWS)}")
        for item in rec.items([topic]):
            try:
                msg, _ = decode(item.frames)
            except DecodeError:
                skipped[0] += 1
                continue
            yield schema, _ROWS[schema](msg, item.log_ns)


def _csv_cells(values: np.ndarray) -> list[str]:
    # str() of a float32 scalar is its shortest round-trip form ("0.1", not "0.10000000149011612")
    return [str(v) for v in values]


def _write_csv(f: IO[str], header: list[str], blocks: Iterator[dict[str, np.ndarray]]) -> int:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    n = 0
    for cols in blocks:
        w.writerows(zip(*(_csv_cells(cols[c]) for c in header), strict=True))
        n += len(cols[header[0]])
    return n


def _write_parquet(out: Path, columns: list[tuple[str, str]], blocks: Iterator[dict[str, np.ndarray]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts: dict[str, list[np.ndarray]] = {c: [] for c, _ in columns}
    for cols in blocks:
        for c, _ in columns:
            parts[c].append(cols[c])
    arrays = []
    for c, dtype in columns:
        joined = np.concatenate(parts[c]) if parts[c] else np.empty(0, object if dtype == "str" else dtype)
        arrays.append(pa.array(joined, type=pa.string()) if dtype == "str" else pa.array(joined.astype(dtype)))
    table = pa.table(dict(zip([c for c, _ in columns], arrays, strict=True)))
    pq.write_table(table, out)
    return int(table.num_rows)


def export_table(path: str | Path, topic: str, out: str | Path, fmt: str = "csv",
                 types_dir: str | Path | None = None) -> tuple[int, int]:
    """Write `topic` of the recording at `path` as a table to `out` ("-": stdout, CSV only).

    Returns (rows written, messages left out because they do not decode). Raises ConfigError for
    an unknown topic, a schema that has no table form or a missing pyarrow, RecordingError for a
    file that cannot be read; the output is then not created (it is written beside and renamed).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ModuleNotFoundError:
            raise ConfigError("--parquet needs pyarrow: pip install 'drivecast[tables]' (or use --csv)") from None
    if str(out) == "-" and fmt != "csv":
        raise ConfigError("only --csv can write to stdout (-)")
    if str(out) != "-" and Path(out).resolve() == Path(path).resolve():
        raise ConfigError(f"{out}: the output must differ from the recording")
    skipped = [0]
    gen = _blocks(path, topic, types_dir, skipped)
    try:
        return _write(path, topic, out, fmt, types_dir, gen), skipped[0]
    finally:
        gen.close()  # closes the recording when writing stopped early


def _write(path: str | Path, topic: str, out: str | Path, fmt: str, types_dir: str | Path | None,
           gen: Iterator[tuple[str, dict[str, np.ndarray]]]) -> int:
    first = next(gen, None)  # opens the file and checks topic and schema before any output exists
    if first is None:
        schema = _schema_of(path, topic, types_dir)
        blocks: Iterator[dict[str, np.ndarray]] = iter(())
    else:
        schema = first[0]
        blocks = _chain(first[1], (cols for _, cols in gen))
    columns = COLUMNS[schema]
    header = [c for c, _ in columns]
    if str(out) == "-":
        return _write_csv(sys.stdout, header, blocks)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.part")
    try:
        if fmt == "csv":
            with open(tmp, "w", newline="") as f:
                n = _write_csv(f, header, blocks)
        else:
            n = _write_parquet(tmp, columns, blocks)
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return n


def _chain(first: dict[str, np.ndarray], rest: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    yield first
    yield from rest


def _schema_of(path: str | Path, topic: str, types_dir: str | Path | None) -> str:
    """The schema of a topic that gave no decodable message (its checks ran in `_blocks`)."""
    with open_recording(path, types_dir) as rec:
        return next(t.schema for t in rec.info().topics if t.name == topic)
