"""Training recipes: every choice that the cross-validation study compares, by name.

A recipe is plain data. `cv` and `fit` take `--recipe NAME` and any number of
`--set field=value` overrides, and write the resolved recipe into their run directory, so
every row of the study in docs/training.md is one reproducible command.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from model_export.errors import DataError


@dataclass(frozen=True)
class Recipe:
    """What is trained on, at what resolution, with which targets, augmentations and schedule."""

    targets: str = "findings"  # "effusion" (one output) or "findings" (NIH's 14, effusion among them)
    other: bool = True  # train on scans with other findings (negatives for effusion; positives for theirs)
    lowres: bool = True  # train on the 64 px copies too
    resolution: int = 64  # training resolution; the exported graph area-pools its 256 px input to it
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3  # AdamW peak of a one-cycle schedule
    weight_decay: float = 1e-4
    effusion_weight: float = 0.0  # BCE pos_weight of the effusion output; 0 = n_negative / n_positive of the fold
    aux_weight: float = 1.0  # weight of the mean loss over the other 13 findings ("findings" only)
    flip: float = 0.0  # probability of a horizontal flip
    rotation: float = 10.0  # ± degrees
    rotation_probability: float = 0.5
    translate: float = 0.0  # ± fraction of the side
    scale: float = 0.0  # ± fraction of the size
    gamma: float = 0.0  # gamma drawn log-uniformly from [1/(1+g), 1+g]
    blur: float = 0.0  # probability of a 3x3 Gaussian blur (sigma 0.1-1)
    mask_corners: float = 0.0  # probability of blanking the top corners, where burned-in markers sit
    ema: float = 0.0  # decay per step of an exponential moving average of the weights; 0 = none
    precision: str = "bf16"  # "bf16" autocast (AMX/Tensor cores) or "fp32"

    def describe(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


# The original study's recipe: effusion vs no finding only, full-resolution scans only,
# rotations within ±10° on half the images and nothing else.
ORIGINAL = Recipe(targets="effusion", other=False, lowres=False)
AUGMENT = {"flip": 0.5, "translate": 0.06, "scale": 0.1, "rotation_probability": 0.8, "gamma": 0.25, "blur": 0.2}

RECIPES: dict[str, Recipe] = {
    "original": ORIGINAL,
    "binary-all": replace(ORIGINAL, other=True, lowres=True),
    "findings": Recipe(),
    "findings-aug": replace(Recipe(), **AUGMENT),
    "findings-aug-ema": replace(Recipe(), **AUGMENT, ema=0.995),
    "binary-all-aug-ema": replace(ORIGINAL, other=True, lowres=True, **AUGMENT, ema=0.995),
}
DEFAULT_RECIPE = "findings-aug-ema"


def resolve(name: str, overrides: list[str] | None = None) -> Recipe:
    """The named recipe with `field=value` overrides applied (values parsed by the field's type)."""
    if name not in RECIPES:
        raise DataError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    types = {field.name: type(getattr(recipe, field.name)) for field in fields(recipe)}
    changes: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise DataError(f"--set {item!r}: expected field=value with a field of {', '.join(types)}")
        kind = types[key]
        try:
            changes[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError as error:
            raise DataError(f"--set {item!r}: {value!r} is not a {kind.__name__}") from error
    recipe = replace(recipe, **changes)
    if recipe.targets not in ("effusion", "findings"):
        raise DataError("targets must be effusion or findings")
    if recipe.precision not in ("bf16", "fp32"):
        raise DataError("precision must be bf16 or fp32")
    return recipe
