"""`train`: one network on a seeded patient-level train/validation/test split, selected on validation AUROC.

Plain steps in the way of torchvision's classification reference (`references/classification/train.py`):
`load_data`, `build` (network, optimiser, schedule, loss), `train_one_epoch` (the loop `fit` and
`cv` share, in model_export/fit.py), `evaluate`, and `train` (the main loop: early stopping,
checkpoints, `--resume`). Class-weighted cross-entropy, ±10° rotations, AdamW with a one-cycle
schedule; mixed precision on CUDA. Under torchrun every rank trains on its part of each global
batch and only rank 0 writes; the run directory's files are described in model_export/rundir.py.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from model_export import distributed
from model_export.cache import Cached
from model_export.config import TrainConfig
from model_export.curves import plot_history
from model_export.data import Split, find_samples, official_split, split_by_patient
from model_export.distributed import World
from model_export.errors import DataError
from model_export.fit import BATCH_NORM_IMAGES, one_cycle_adamw, placed, recalibrate_batch_norm, train_one_epoch
from model_export.init import initial_weights
from model_export.network import build_network, predict_probabilities
from model_export.rundir import (
    load_checkpoint,
    load_split_tensors,
    read_config,
    read_split,
    save_checkpoint,
    write_config,
    write_json,
    write_split,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    best_epoch: int
    best_val_auroc: float
    epochs_completed: int
    stop_reason: str


@dataclass(frozen=True)
class Data:
    split: Split
    train_x: Cached
    val_x: Cached
    train_y: np.ndarray
    val_y: np.ndarray


@dataclass
class Training:
    """What one run trains with; `model` is `network` wrapped for DDP when there are several ranks."""

    network: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_function: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor], torch.Tensor]
    autocast: torch.dtype | None


def load_data(config: TrainConfig, run: Path, *, resume: bool, world: World) -> Data:
    """The run's split (drawn now, or read back on --resume) and its cached tensors; rank 0 writes and decodes first."""
    if resume:
        split = read_split(run)
    else:
        split = new_split(config)
        if world.is_main:
            write_config(run, config)
            write_split(run, split)
    train_x, val_x = world.main_first(lambda: load_split_tensors(split, config, ["train", "val"]))
    logger.info("split (patient-level, seed %d): %s", split.seed, json.dumps(split.summary()))
    labels = {name: np.array([sample.label for sample in samples]) for name, samples in split.parts().items()}
    return Data(split, train_x, val_x, labels["train"], labels["val"])


def new_split(config: TrainConfig) -> Split:
    samples = find_samples(Path(config.data), Path(config.labels) if config.labels else None)
    if config.official_split:
        if not config.labels:
            raise DataError("--official-split needs --labels Data_Entry_2017.csv (NIH's test_list.txt lies beside it)")
        return official_split(samples, Path(config.labels).parent / "test_list.txt", val_fraction=config.val_fraction, seed=config.seed)
    return split_by_patient(samples, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)


def build(config: TrainConfig, data: Data, world: World) -> Training:
    """Network, AdamW with its one-cycle schedule over every epoch, gradient scaler, weighted loss and augmentation."""
    network, model = placed(build_network(), initial_weights(config.init)[0] if config.init else None, world)
    optimizer, scheduler = one_cycle_adamw(
        network, learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        total_steps=config.epochs * math.ceil(len(data.train_x) / config.batch_size),
    )  # fmt: skip
    amp = world.device.type == "cuda"
    weights = class_weights(config.class_weights, data.train_y)
    logger.info("device %s x %d (mixed precision: %s), class weights %s", world.device, world.size, amp, weights)
    rotate = v2.RandomApply(
        [v2.RandomRotation(config.rotation_degrees, interpolation=InterpolationMode.BILINEAR, fill=0.0)],
        p=config.rotation_probability,
    )
    return Training(
        network, model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=amp),
        weighted_cross_entropy(torch.tensor(weights, dtype=torch.float32, device=world.device), world.size),
        rotate, torch.float16 if amp else None,
    )  # fmt: skip


def weighted_cross_entropy(
    weights: torch.Tensor, world_size: int = 1
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Class-weighted cross-entropy of (logits, targets, the global batch's targets).

    On one of `world_size` > 1 ranks: this rank's share of the global batch's weighted mean, times
    `world_size`, so that DDP's gradient average is the global batch's gradient.
    """

    def loss(logits: torch.Tensor, targets: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        if world_size == 1:
            return nn.functional.cross_entropy(logits.float(), targets, weight=weights)
        terms = nn.functional.cross_entropy(logits.float(), targets, weight=weights, reduction="sum")
        return world_size * terms / weights[batch_targets].sum()

    return loss


def evaluate(network: nn.Module, images: Cached, labels: np.ndarray, device: torch.device) -> float:
    """Validation AUROC of P(effusion)."""
    return float(roc_auc_score(labels, predict_probabilities(network, images, device=device)))


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
    world = distributed.world(choose_device(config.device))
    if world.is_main:
        run.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    data = load_data(config, run, resume=resume, world=world)
    if config.init and world.is_main and not resume:
        write_json(run / "init.json", initial_weights(config.init)[1])
    training = build(config, data, world)

    state = {"epoch": 0, "best_auroc": -1.0, "best_epoch": 0, "history": []}
    if resume:
        checkpoint = load_checkpoint(run / "last.pt", world.device)
        training.network.load_state_dict(checkpoint["model"])
        training.optimizer.load_state_dict(checkpoint["optimizer"])
        training.scheduler.load_state_dict(checkpoint["scheduler"])
        training.scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["state"]
        logger.info("resuming %s after epoch %d", run, state["epoch"])

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
        order = torch.randperm(len(data.train_x)).numpy()
        train_loss = train_one_epoch(
            training.model, data.train_x, data.train_y, order=order, batch_size=config.batch_size, augment=training.augment,
            loss_function=training.loss_function, optimizer=training.optimizer, scheduler=training.scheduler,
            scaler=training.scaler, autocast=training.autocast, memory_format=torch.contiguous_format, world=world,
            workers=config.workers, description=f"epoch {epoch}/{config.epochs}",
        )  # fmt: skip
        recalibrate_batch_norm(
            training.network, data.train_x, order[:BATCH_NORM_IMAGES], batch_size=config.batch_size, device=world.device
        )
        val_auroc = evaluate(training.network, data.val_x, data.val_y, world.device)
        last_epoch_seconds = time.monotonic() - epoch_started
        state["epoch"] = epoch
        state["history"].append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_auroc": val_auroc,
                "learning_rate": training.scheduler.get_last_lr()[0],
                "seconds": last_epoch_seconds,
            }
        )
        improved = val_auroc > state["best_auroc"]
        if improved:
            state["best_auroc"], state["best_epoch"] = val_auroc, epoch
        if world.is_main:
            save_epoch(run, training, state, improved)
        world.barrier()  # every rank's next --resume finds this epoch's files
        logger.info(
            "epoch %d: train loss %.4f, val AUROC %.3f%s (%.0f s)",
            epoch, train_loss, val_auroc, " (best)" if improved else "", last_epoch_seconds,
        )  # fmt: skip
    return TrainResult(state["best_epoch"], state["best_auroc"], state["epoch"], stop_reason)


def save_epoch(run: Path, training: Training, state: dict, improved: bool) -> None:
    """best.pt when validation improved, last.pt (everything --resume needs), history.json and its curves."""
    weights = training.network.state_dict()
    if improved:
        save_checkpoint(run / "best.pt", {"model": weights, "epoch": state["best_epoch"], "val_auroc": state["best_auroc"]})
    save_checkpoint(
        run / "last.pt",
        {
            "model": weights,
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            "scaler": training.scaler.state_dict(),
            "state": state,
        },
    )
    write_json(run / "history.json", state["history"])
    plot_history(state["history"], run / "curves.png")


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
