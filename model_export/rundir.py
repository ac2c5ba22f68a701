"""A `train` run directory: what train, evaluate, export and variants read and write.

`config.json` (TrainConfig), `split.json` (every file per split), `init.json` (where `--init` weights came from), `history.json` (one row per
epoch), `curves.png`, `best.pt` (the weights with the best validation AUROC), `last.pt` (full
state for `--resume`), and the scan cache (`<output>/cache` unless `--cache-dir`).
Files are replaced atomically, so an interrupted run never leaves a torn one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_export.cache import Cached, ScanCache
from model_export.config import TrainConfig
from model_export.data import Split
from model_export.errors import DataError


def read_config(run: Path) -> TrainConfig:
    try:
        values: dict[str, Any] = json.loads((run / "config.json").read_text())
    except OSError as error:
        raise DataError(f"{run} holds no training run (config.json: {error.strerror or error})") from error
    known = {field.name for field in fields(TrainConfig)}
    values["output"] = str(run)  # the run may have been moved since it was written
    return TrainConfig(**{key: value for key, value in values.items() if key in known})


def write_config(run: Path, config: TrainConfig) -> None:
    write_json(run / "config.json", asdict(config))


def read_split(run: Path) -> Split:
    return Split.from_json(json.loads((run / "split.json").read_text()))


def write_split(run: Path, split: Split) -> None:
    write_json(run / "split.json", split.to_json())


def cache_of(config: TrainConfig) -> ScanCache:
    return ScanCache(Path(config.cache_dir) if config.cache_dir else Path(config.output) / "cache", dtype=config.cache_dtype)


def load_split_tensors(split: Split, config: TrainConfig, names: list[str]) -> list[Cached]:
    """Tensors of the named splits, in split order, read lazily from the run's scan cache."""
    parts = split.parts()
    everything = [sample.path for name in ("train", "val", "test") for sample in parts[name]]
    tensors = cache_of(config).tensors(everything, workers=config.workers)
    offsets = {"train": 0, "val": len(split.train), "test": len(split.train) + len(split.val)}
    return [tensors.take(np.arange(offsets[name], offsets[name] + len(parts[name]))) for name in names]


def write_json(path: Path, data: Any) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """torch.save through a temporary file, so an interrupted run never leaves a torn checkpoint."""
    partial = path.with_suffix(".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)
