"""A training run's settings: one dataclass, whose defaults the command line reads (written once, here).

Kept free of heavy imports so that `python -m model_export --help` stays quick.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any


@dataclass
class TrainConfig:
    """Every choice that shapes a `train` run; saved as config.json and restored by --resume."""

    data: str
    output: str
    labels: str | None = None
    epochs: int = 40
    batch_size: int = 16  # the global batch: split over the ranks under torchrun
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    class_weights: str = "auto"  # "auto" (inverse class frequency), "none", or "W0,W1"
    rotation_degrees: float = 10.0
    rotation_probability: float = 0.5
    patience: int = 10
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    official_split: bool = False  # NIH's test_list.txt as test (beside --labels); validation carved from train_val
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    cache_dir: str | None = None  # default: <output>/cache
    cache_dtype: str = "float32"
    init: str | None = None  # initial weights (model_export/init.py); default random


def defaults(config: type) -> dict[str, Any]:
    """Field name -> default of a dataclass (fields without one are left out)."""
    return {field.name: field.default for field in fields(config) if field.default is not MISSING}
