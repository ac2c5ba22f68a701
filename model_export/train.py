"""The training loop: class-weighted cross-entropy, ±10° rotations, AdamW with a one-cycle
schedule, model selection and early stopping on validation AUROC, resumable checkpoints.

A run directory holds everything needed to evaluate, export or resume the run:
`config.json`, `split.json` (every file per split), `history.json`, `best.pt` (the weights
with the best validation AUROC) and `last.pt` (full state for `--resume`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torchvision.transforms import InterpolationMode, v2
from tqdm import tqdm

from model_export.data import Split, find_samples, load_tensors, split_by_patient
from model_export.errors import DataError
from model_export.fit import BATCH_NORM_IMAGES, recalibrate_batch_norm
from model_export.network import build_network, predict_probabilities

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every choice that shapes a run; saved as config.json and restored by --resume."""

    data: str
    output: str
    labels: str | None = None
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    class_weights: str = "auto"  # "auto" (inverse class frequency), "none", or "W0,W1"
    rotation_degrees: float = 10.0
    rotation_probability: float = 0.5
    patience: int = 10
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    cache_dir: str | None = None  # default: <output>/cache


@dataclass(frozen=True)
class TrainResult:
    best_epoch: int
    best_val_auroc: float
    epochs_completed: int
    stop_reason: str


def train(config: TrainConfig, *, max_minutes: float | None = None, resume: bool = False) -> TrainResult:
    """Train (or resume) the run in `config.output`.

    `max_minutes` bounds this invocation: an epoch starts only if the previous one suggests it
    ends within the budget, and at least one epoch always runs, so resumed runs progress.
    """
    started = time.monotonic()
    run = Path(config.output)
    if resume:
        config = read_config(run)
    elif (run / "last.pt").exists():
        raise DataError(f"{run} already holds a training run; pass --resume to continue it or choose another --output")
    run.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = choose_device(config.device)

    split = read_split(run) if resume else new_split(config)
    if not resume:
        write_json(run / "config.json", asdict(config))
        write_json(run / "split.json", split.to_json())
    train_x, val_x = load_split_tensors(split, config, ["train", "val"])
    train_y = np.array([sample.label for sample in split.train])
    val_y = np.array([sample.label for sample in split.val])
    logger.info("split (patient-level, seed %d): %s", split.seed, json.dumps(split.summary()))

    network = build_network().to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    weights = class_weights(config.class_weights, train_y)
    loss_function = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
    logger.info("device %s (mixed precision: %s), class weights %s", device, amp, weights)

    state = {"epoch": 0, "best_auroc": -1.0, "best_epoch": 0, "history": []}
    if resume:
        checkpoint = torch.load(run / "last.pt", map_location=device, weights_only=True)
        network.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["state"]
        logger.info("resuming %s after epoch %d", run, state["epoch"])

    rotate = v2.RandomApply(
        [v2.RandomRotation(config.rotation_degrees, interpolation=InterpolationMode.BILINEAR, fill=0.0)],
        p=config.rotation_probability,
    )
    stop_reason = "epochs"
    last_epoch_seconds = 0.0
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if state["epoch"] - state["best_epoch"] >= config.patience:
            stop_reason = f"no validation AUROC gain for {config.patience} epochs"
            break
        elapsed = time.monotonic() - started
        if max_minutes is not None and last_epoch_seconds and elapsed + last_epoch_seconds > max_minutes * 60:
            stop_reason = f"--max-minutes {max_minutes:g} reached"
            break
        epoch_started = time.monotonic()
        torch.manual_seed(config.seed * 100_003 + epoch)  # per-epoch seeds make a resumed run identical
        order = torch.randperm(len(train_x)).numpy()
        network.train()
        total_loss = 0.0
        batches = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None)
        for step in batches:
            indices = np.sort(order[step * config.batch_size : (step + 1) * config.batch_size])
            images = torch.stack([rotate(image) for image in torch.from_numpy(train_x[indices])]).to(device)
            targets = torch.from_numpy(train_y[indices]).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = loss_function(network(images), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += loss.item() * len(indices)
            batches.set_postfix(loss=f"{loss.item():.3f}")

        recalibrate_batch_norm(network, train_x, order[:BATCH_NORM_IMAGES], batch_size=config.batch_size, device=device)
        val_scores = predict_probabilities(network, val_x, device=device)
        val_auroc = float(roc_auc_score(val_y, val_scores))
        last_epoch_seconds = time.monotonic() - epoch_started
        state["epoch"] = epoch
        state["history"].append(
            {
                "epoch": epoch,
                "train_loss": total_loss / len(train_x),
                "val_auroc": val_auroc,
                "learning_rate": scheduler.get_last_lr()[0],
                "seconds": last_epoch_seconds,
            }
        )
        improved = val_auroc > state["best_auroc"]
        if improved:
            state["best_auroc"], state["best_epoch"] = val_auroc, epoch
            save(run / "best.pt", {"model": network.state_dict(), "epoch": epoch, "val_auroc": val_auroc})
        save(
            run / "last.pt",
            {
                "model": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "state": state,
            },
        )
        write_json(run / "history.json", state["history"])
        logger.info(
            "epoch %d: train loss %.4f, val AUROC %.3f%s (%.0f s)",
            epoch,
            total_loss / len(train_x),
            val_auroc,
            " (best)" if improved else "",
            last_epoch_seconds,
        )
    return TrainResult(state["best_epoch"], state["best_auroc"], state["epoch"], stop_reason)


def new_split(config: TrainConfig) -> Split:
    samples = find_samples(Path(config.data), Path(config.labels) if config.labels else None)
    return split_by_patient(
        samples, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed
    )


def load_split_tensors(split: Split, config: TrainConfig, names: list[str]) -> list[np.ndarray]:
    """Tensors of the named splits, in split order, from one cache file shared by every command."""
    parts = split.parts()
    everything = [sample for name in ("train", "val", "test") for sample in parts[name]]
    cache_dir = Path(config.cache_dir) if config.cache_dir else Path(config.output) / "cache"
    tensors = load_tensors(everything, cache_dir=cache_dir, workers=config.workers)
    offsets = {"train": 0, "val": len(split.train), "test": len(split.train) + len(split.val)}
    return [np.asarray(tensors[offsets[name] : offsets[name] + len(parts[name])]) for name in names]


def class_weights(setting: str, labels: np.ndarray) -> list[float]:
    """Cross-entropy class weights: inverse class frequency (balanced), none, or given."""
    if setting == "auto":
        counts = np.bincount(labels, minlength=2)
        return [float(len(labels) / (2 * count)) for count in counts]
    if setting == "none":
        return [1.0, 1.0]
    try:
        values = [float(value) for value in setting.split(",")]
    except ValueError:
        values = []
    if len(values) != 2 or min(values) <= 0:
        raise DataError(f"--class-weights must be auto, none or two positive numbers W0,W1, got {setting!r}")
    return values


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed torch (initial weights, shuffling, rotations) and ask cuDNN for deterministic kernels."""
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def read_config(run: Path) -> TrainConfig:
    try:
        values: dict[str, Any] = json.loads((run / "config.json").read_text())
    except OSError as error:
        raise DataError(f"{run} holds no training run (config.json: {error.strerror or error})") from error
    known = {field.name for field in fields(TrainConfig)}
    values["output"] = str(run)  # the run may have been moved since it was written
    return TrainConfig(**{key: value for key, value in values.items() if key in known})


def read_split(run: Path) -> Split:
    return Split.from_json(json.loads((run / "split.json").read_text()))


def write_json(path: Path, data: Any) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def save(path: Path, checkpoint: dict[str, Any]) -> None:
    """torch.save through a temporary file, so an interrupted run never leaves a torn checkpoint."""
    partial = path.with_suffix(".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)
