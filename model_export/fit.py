"""Fit one network on preprocessed tensors with a recipe: the step that every CV fold and the final model share.

Plain steps in the way of torchvision's classification reference: `augment`, `train_one_epoch`,
`fit`, `predict_logits`. Seeded throughout: the same recipe, tensors and seed give the same weights
on the same kind of machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import InterpolationMode, v2
from tqdm import tqdm

from model_export.network import build_network
from model_export.pool import EFFUSION, FINDINGS
from model_export.recipes import Recipe

BATCH_NORM_IMAGES = 512  # un-augmented training images that re-estimate BatchNorm statistics at the end


def output_names(recipe: Recipe) -> tuple[str, ...]:
    return FINDINGS if recipe.targets == "findings" else ("Effusion",)


def effusion_index(recipe: Recipe) -> int:
    return EFFUSION if recipe.targets == "findings" else 0


def augmenter(recipe: Recipe) -> Callable[[torch.Tensor], torch.Tensor]:
    """One image [1, H, W] in [0, 1] -> an augmented copy; geometric moves fill with 0, the image minimum."""
    geometric = v2.RandomApply(
        [
            v2.RandomAffine(
                degrees=recipe.rotation,
                translate=(recipe.translate, recipe.translate) if recipe.translate else None,
                scale=(1 - recipe.scale, 1 + recipe.scale) if recipe.scale else None,
                interpolation=InterpolationMode.BILINEAR,
                fill=0.0,
            )
        ],
        p=recipe.rotation_probability,
    )
    blur = v2.GaussianBlur(3, sigma=(0.1, 1.0))
    side = recipe.resolution

    def augment(image: torch.Tensor) -> torch.Tensor:
        if recipe.flip and torch.rand(()) < recipe.flip:
            image = image.flip(-1)
        image = geometric(image)
        if recipe.gamma:
            bound = math.log1p(recipe.gamma)
            image = image.clamp(0, 1) ** math.exp((torch.rand(()) * 2 - 1).item() * bound)
        if recipe.blur and torch.rand(()) < recipe.blur:
            image = blur(image)
        if recipe.mask_corners and torch.rand(()) < recipe.mask_corners:
            image = mask_top_corners(image[None], side)[0]
        return image

    return augment


def mask_top_corners(images: torch.Tensor, side: int) -> torch.Tensor:
    """Blank the top-left and top-right corners (a fifth of the height, a quarter of the width each)."""
    masked = images.clone()
    rows, cols = side // 5, side // 4
    masked[..., :rows, :cols] = 0.0
    masked[..., :rows, side - cols :] = 0.0
    return masked


def masked_bce(recipe: Recipe, positive_weight: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Class-weighted BCE on the effusion output plus `aux_weight` x the mean BCE of the other findings.

    Unknown findings (NaN targets: scans labelled only effusion / other) do not count.
    """
    index = effusion_index(recipe)
    weight = torch.tensor(positive_weight)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        main = nn.functional.binary_cross_entropy_with_logits(logits[:, index], targets[:, index], pos_weight=weight)
        if logits.shape[1] == 1:
            return main
        others = torch.ones(logits.shape[1], dtype=torch.bool)
        others[index] = False
        known = ~torch.isnan(targets[:, others])
        if not known.any():
            return main
        terms = nn.functional.binary_cross_entropy_with_logits(
            logits[:, others][known], targets[:, others][known], reduction="mean"
        )
        return main + recipe.aux_weight * terms

    return loss


def train_one_epoch(
    network: nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    order: np.ndarray,
    recipe: Recipe,
    augment: Callable[[torch.Tensor], torch.Tensor],
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel | None,
    description: str = "",
) -> float:
    """One pass over `images` in `order`; returns the mean training loss."""
    network.train()
    total = 0.0
    steps = math.ceil(len(order) / recipe.batch_size)
    for step in tqdm(range(steps), desc=description, leave=False, disable=None):
        batch = np.sort(order[step * recipe.batch_size : (step + 1) * recipe.batch_size])
        if len(batch) < 2:
            continue  # BatchNorm cannot train on a single image
        x = torch.stack([augment(image) for image in torch.from_numpy(images[batch])])
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(targets[batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.precision == "bf16"):
            logits = network(x)
        loss = loss_function(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(network)
        total += loss.item() * len(batch)
    return total / max(1, len(order))


def fit(
    recipe: Recipe,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    seed: int,
    description: str = "",
    on_epoch: Callable[[int, float, nn.Module], None] | None = None,
) -> nn.Module:
    """Train a fresh network for `recipe.epochs` epochs (no early stopping: nothing is held out to stop on).

    `images` are float32 [N, 1, r, r] at the recipe's resolution; `targets` float32 [N, outputs]
    (NaN = unknown). Returns the network (the EMA weights when the recipe averages) in eval mode,
    with BatchNorm statistics re-estimated on un-augmented training images.
    """
    torch.manual_seed(seed)
    network = build_network(outputs=len(output_names(recipe))).to(memory_format=torch.channels_last)
    index = effusion_index(recipe)
    positives = float(np.nansum(targets[:, index]))
    positive_weight = recipe.effusion_weight or (len(targets) - positives) / max(positives, 1.0)
    loss_function = masked_bce(recipe, positive_weight)
    optimizer = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(images) / recipe.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.epochs * steps_per_epoch, pct_start=0.15
    )
    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema)) if recipe.ema else None
    augment = augmenter(recipe)
    for epoch in range(1, recipe.epochs + 1):
        torch.manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(images)).numpy()
        loss = train_one_epoch(
            network, images, targets, order=order, recipe=recipe, augment=augment, loss_function=loss_function,
            optimizer=optimizer, scheduler=scheduler, ema=ema, description=f"{description} epoch {epoch}/{recipe.epochs}",
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch(epoch, loss, network)
    final = ema.module if ema is not None else network
    generator = np.random.default_rng(seed)
    recalibrate_batch_norm(final, images, generator.permutation(len(images))[:BATCH_NORM_IMAGES], batch_size=recipe.batch_size)
    return final.eval()


def recalibrate_batch_norm(
    network: nn.Module, images: np.ndarray, indices: np.ndarray, *, batch_size: int, device: torch.device | None = None
) -> None:
    """Replace BatchNorm running statistics by exact averages over un-augmented training images.

    The running averages lag the weights (and an EMA of the weights has none of its own that fit);
    on a small dataset that lag alone can ruin evaluation-mode predictions ("precise BN", Wu & Johnson 2021).
    """
    layers = [module for module in network.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches below
    network.train()
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = np.sort(indices[start : start + batch_size])
            network(torch.from_numpy(np.asarray(images[batch])).to(device or "cpu").contiguous(memory_format=torch.channels_last))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    network.eval()


def predict_logits(network: nn.Module, images: np.ndarray, *, index: int, batch_size: int = 128) -> np.ndarray:
    """The effusion logit of every image, in float32 (as the exported graph computes it)."""
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32))
            out.append(network(batch.contiguous(memory_format=torch.channels_last))[:, index].float().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
