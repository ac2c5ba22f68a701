"""Training curves: loss, learning rate and validation AUROC per epoch, drawn next to the history file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def plot_history(history: Sequence[dict[str, Any]], path: Path) -> None:
    """One PNG with three panels over epochs; a value missing from the history (fit has no validation) is left out."""
    panels = [(key, title) for key, title in CURVES if any(key in row for row in history)]
    figure = Figure(figsize=(4 * max(1, len(panels)), 3.2), layout="constrained")
    for axis, (key, title) in zip(figure.subplots(1, max(1, len(panels)), squeeze=False)[0], panels):
        rows = [row for row in history if key in row]
        axis.plot([row["epoch"] for row in rows], [row[key] for row in rows], marker="o", markersize=3)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    partial = path.with_suffix(".partial.png")
    figure.savefig(partial, dpi=100)
    partial.replace(path)


CURVES = (("train_loss", "training loss"), ("learning_rate", "learning rate"), ("val_auroc", "validation AUROC"))
