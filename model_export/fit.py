"""Fit one network on preprocessed tensors with a recipe: the step that every CV fold and the final model share.

Plain steps in the way of torchvision's classification reference: `augment`, `train_one_epoch`
(the loop `train` uses too, one process or torchrun), `fit`, `predict_logits`. Seeded throughout: the same recipe, tensors and seed give the same weights
on the same kind of machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import InterpolationMode, v2
from tqdm import tqdm

from model_export.distributed import SINGLE, World, use_global_batch_norm
from model_export.init import apply_initial_weights
from model_export.network import build_network
from model_export.pool import EFFUSION, FINDINGS, ArrayLike
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


def masked_bce(
    recipe: Recipe, positive_weight: float, *, world_size: int = 1
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Class-weighted BCE on the effusion output plus `aux_weight` x the mean BCE of the other findings.

    Unknown findings (NaN targets: scans labelled only effusion / other) do not count. The loss takes
    (logits, targets, the global batch's targets); on one of `world_size` > 1 ranks it is this rank's
    share of the global batch's loss times `world_size`, so DDP's gradient average is the global gradient.
    """
    index = effusion_index(recipe)
    weight = torch.tensor(positive_weight)

    def loss(logits: torch.Tensor, targets: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        weight_here = weight.to(logits.device)
        if world_size > 1:
            return world_size * sharded_bce(
                logits, targets, batch_targets, index=index, weight=weight_here, aux_weight=recipe.aux_weight
            )
        main = nn.functional.binary_cross_entropy_with_logits(logits[:, index], targets[:, index], pos_weight=weight_here)
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


def sharded_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    batch_targets: torch.Tensor,
    *,
    index: int,
    weight: torch.Tensor,
    aux_weight: float,
) -> torch.Tensor:
    """`masked_bce`'s terms summed over this rank's images and divided by the global batch's counts."""
    main = nn.functional.binary_cross_entropy_with_logits(logits[:, index], targets[:, index], pos_weight=weight, reduction="sum")
    main = main / len(batch_targets)
    if logits.shape[1] == 1:
        return main
    others = torch.ones(logits.shape[1], dtype=torch.bool)
    others[index] = False
    known_anywhere = int((~torch.isnan(batch_targets[:, others])).sum())
    if not known_anywhere:
        return main
    known = ~torch.isnan(targets[:, others])
    terms = nn.functional.binary_cross_entropy_with_logits(logits[:, others][known], targets[:, others][known], reduction="sum")
    return main + aux_weight * terms / known_anywhere


class Batches(torch.utils.data.Dataset):
    """Global batch `indices` -> (images, targets) as read from memory or the on-disk cache (no augmentation)."""

    def __init__(self, images: ArrayLike, targets: np.ndarray) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.images[indices], dtype=np.float32), self.targets[indices]


def global_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The epoch's global batches in `order`, each sorted; a last batch of one image is dropped (BatchNorm needs two)."""
    batches = [np.sort(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    return [batch for batch in batches if len(batch) >= 2]


def train_one_epoch(
    model: nn.Module,
    images: ArrayLike,
    targets: np.ndarray,
    *,
    order: np.ndarray,
    batch_size: int,
    augment: Callable[[torch.Tensor], torch.Tensor],
    loss_function: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.channels_last,
    world: World = SINGLE,
    workers: int = 0,
    description: str = "",
) -> float:
    """One pass over `images` in `order`; returns the mean training loss. The loop every training command shares.

    Batches are read by `workers` DataLoader processes (from the memory-mapped cache when `images`
    is a view of it) and augmented here, in order, with the global torch generator: the numbers do
    not depend on `workers`. Under DDP every rank augments the whole global batch and trains on its
    part (`world.part`), so the result matches one process with the same global batch.
    """
    model.train()
    total = 0.0
    batches = global_batches(order, batch_size)
    # its own generator, so that the global one's stream stays the augmentations' as it always was
    loader = torch.utils.data.DataLoader(
        Batches(images, targets), batch_size=None, sampler=batches, num_workers=workers, generator=torch.Generator()
    )
    for (x, y), batch in zip(tqdm(loader, desc=description, leave=False, disable=None), batches):
        x = torch.stack([augment(image) for image in x])
        part = world.part(len(batch)) if world.size > 1 else slice(None)
        x = x[part].contiguous(memory_format=memory_format).to(world.device)
        y_all = y.to(world.device)
        with torch.autocast(world.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            logits = model(x)
        loss = loss_function(logits, y_all[part], y_all)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model.module if world.size > 1 else model)
        if world.size > 1:  # the global batch's loss, for the log
            loss = loss.detach() / world.size
            dist.all_reduce(loss)
        total += loss.item() * len(batch)
    return total / max(1, len(order))


def fit(
    recipe: Recipe,
    images: ArrayLike,
    targets: np.ndarray,
    *,
    seed: int,
    description: str = "",
    on_epoch: Callable[[dict[str, float], nn.Module], None] | None = None,
    world: World = SINGLE,
    workers: int = 0,
    init: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Train a fresh network for `recipe.epochs` epochs (no early stopping: nothing is held out to stop on).

    `images` are float32 [N, 1, r, r] at the recipe's resolution (an array, or a `Downsampled` view of
    the cache); `targets` float32 [N, outputs] (NaN = unknown). Returns the network (the EMA weights
    when the recipe averages) in eval mode, with BatchNorm statistics re-estimated on un-augmented
    training images. Under torchrun (`world`), ranks split each global batch of `recipe.batch_size`.
    `init` (model_export/init.py) replaces the random initial weights where its tensors fit.
    """
    torch.manual_seed(seed)
    network, model = placed(build_network(outputs=len(output_names(recipe))).to(memory_format=torch.channels_last), init, world)
    index = effusion_index(recipe)
    positives = float(np.nansum(targets[:, index]))
    positive_weight = recipe.effusion_weight or (len(targets) - positives) / max(positives, 1.0)
    loss_function = masked_bce(recipe, positive_weight, world_size=world.size)
    optimizer, scheduler = one_cycle_adamw(
        network, learning_rate=recipe.learning_rate, weight_decay=recipe.weight_decay,
        total_steps=recipe.epochs * math.ceil(len(images) / recipe.batch_size),
    )  # fmt: skip
    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema)) if recipe.ema else None
    augment = augmenter(recipe)
    for epoch in range(1, recipe.epochs + 1):
        torch.manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(images)).numpy()
        loss = train_one_epoch(
            model, images, targets, order=order, batch_size=recipe.batch_size, augment=augment, loss_function=loss_function,
            optimizer=optimizer, scheduler=scheduler, ema=ema, autocast=torch.bfloat16 if recipe.precision == "bf16" else None,
            world=world, workers=workers, description=f"{description} epoch {epoch}/{recipe.epochs}",
        )  # fmt: skip
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "train_loss": loss, "learning_rate": scheduler.get_last_lr()[0]}, network)
    final = use_global_batch_norm(ema.module if ema is not None else network, on=False)
    generator = np.random.default_rng(seed)
    recalibrate_batch_norm(
        final, images, generator.permutation(len(images))[:BATCH_NORM_IMAGES], batch_size=recipe.batch_size, device=world.device
    )
    return final.cpu().eval()


def placed(network: nn.Module, init: dict[str, torch.Tensor] | None, world: World) -> tuple[nn.Module, nn.Module]:
    """A new network with its initial weights, on its device: (the network, what the training step calls: the
    network, or under torchrun its DDP wrapper with one BatchNorm over the global batch)."""
    if init is not None:
        apply_initial_weights(network, init)
    if world.size > 1:
        network = use_global_batch_norm(network)
    network = network.to(world.device)
    return network, (DistributedDataParallel(network) if world.size > 1 else network)


def one_cycle_adamw(
    network: nn.Module, *, learning_rate: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW under a one-cycle schedule (15% warm-up), the optimiser of every training road."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=total_steps, pct_start=0.15)
    return optimizer, scheduler


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
