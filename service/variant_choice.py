"""Which file of the model to serve, FP32 or a faster variant of it, and why (`CXR_MODEL_VARIANT`).

`auto`, the default, serves what is fastest where the service runs without changing its answers:
on the CPU the INT8 sibling, when `python -m model_export variants` wrote one and the AUROC guard
recorded in its `variant` metadata passed (INT8 was 2.5-3.4x faster there); on CUDA the FP32 file,
until FP16 is measured faster (docs/performance.md). An explicit variant is served as asked, or
start-up fails. Whatever is chosen, `/model`, `/ready` and the start-up log say which and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from service.model import CUDA, Model, ModelError, ModelFacts, load_model
from service.resources import available_cpus
from service.settings import Settings, variant_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """The loaded model, the variant it is (fp32, int8, fp16) and the reason it was chosen.

    A frontend of the shared inference process (service/shared_inference.py) holds only the
    model's facts, sent by the process that runs it.
    """

    model: Model | ModelFacts
    variant: str
    reason: str


def load_served_model(settings: Settings) -> ServedModel:
    """Choose the variant `settings` ask for, load and check it; raises ModelError naming any problem."""
    requested = settings.model_variant
    if requested != "auto":
        return ServedModel(_load(settings, requested), requested, f"CXR_MODEL_VARIANT={requested}")
    if settings.execution_provider != "cpu" and CUDA in ort.get_available_providers():
        return ServedModel(_load(settings, "fp32"), "fp32", "auto: CUDA is available, where FP32 is the fastest variant measured")
    int8 = variant_path(settings.model_path, "int8")
    if not int8.exists():
        return ServedModel(_load(settings, "fp32"), "fp32", f"auto on CPU: there is no INT8 variant {int8}")
    try:
        model = _load(settings, "int8")
    except ModelError as error:
        logger.warning("the INT8 variant is not served: %s", error)
        return ServedModel(_load(settings, "fp32"), "fp32", f"auto on CPU: the INT8 variant was refused: {error}")
    verdict, passed = guard_verdict(model.contract.metadata.get("variant"))
    if not passed:
        return ServedModel(_load(settings, "fp32"), "fp32", f"auto on CPU: {verdict}")
    return ServedModel(model, "int8", f"auto on CPU: {verdict}")


def guard_verdict(facts: Any) -> tuple[str, bool]:
    """Read the AUROC guard a variant recorded when it was built: what it says, and whether it passed."""
    try:
        auroc, fp32_auroc, tolerance = (float(facts[key]) for key in ("auroc", "fp32_auroc", "auroc_tolerance"))
    except (KeyError, TypeError, ValueError):
        return "the INT8 variant records no AUROC guard", False
    passed = abs(auroc - fp32_auroc) <= tolerance
    relation = "within" if passed else "not within"
    return f"INT8 AUROC {auroc:.4f} is {relation} {tolerance} of FP32's {fp32_auroc:.4f}", passed


def _load(settings: Settings, variant: str) -> Model:
    return load_model(
        variant_path(settings.model_path, variant),
        policy=settings.execution_provider,
        intra_op_threads=settings.intra_op_threads or available_cpus(),
        variant_of=None if variant == "fp32" else settings.model_path,
    )
