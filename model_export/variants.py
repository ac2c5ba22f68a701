"""Faster variants of an exported model: INT8 for CPUs, FP16 for CUDA; each offered only if its AUROC holds.

- INT8: ONNX Runtime static quantization (QOperator format, per-channel int8 weights, uint8
  activations), calibrated on training images that went through the service's own decode and
  preprocess. QOperator ran faster than QDQ on CPU in our measurements (docs/performance.md).
- FP16: weights and arithmetic in half precision for the CUDA provider, with float32 input
  and output kept (`keep_io_types`), so the model contract's signature still holds.

A variant is written next to its source as `<stem>.<variant>.onnx` (what `CXR_MODEL_VARIANT`
serves) only when its AUROC on the evaluation images is within `AUROC_TOLERANCE` of the FP32
model's (either way), measured in the same run; its metadata carries the contract of the source plus both
AUROCs. A variant that misses the tolerance is not written, and a stale one is removed.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from sklearn.metrics import roc_auc_score

from model_export.cache import Cached
from service.model import INPUT_NAME, ProviderPolicy, load_model
from service.settings import variant_path

Variant = Literal["int8", "fp16"]
VARIANTS: tuple[Variant, ...] = ("int8", "fp16")
AUROC_TOLERANCE = 0.005
EVALUATION_BATCH = 16


@dataclass(frozen=True)
class VariantReport:
    """What happened to one variant: its AUROC next to FP32's, and whether it is offered."""

    variant: str
    auroc: float
    fp32_auroc: float
    images: int
    offered: bool
    path: str | None


def quantize_int8(source: Path, target: Path, calibration: np.ndarray) -> Path:
    """Static INT8 quantization calibrated on preprocessed images, float32 [N, 1, 256, 256]."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(np.split(calibration, len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ONNX shape inference + graph folding, as ORT recommends; its symbolic shape inference fails on the
        # heatmap branch (a Resize whose size comes from Shape) and is not needed for a fixed 256x256 input.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return target


def convert_fp16(source: Path, target: Path) -> Path:
    """Half-precision weights and arithmetic, float32 input and output (the contract's signature)."""
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def scores(model_path: Path, tensors: np.ndarray | Cached, *, policy: ProviderPolicy) -> np.ndarray:
    """Effusion probabilities of `tensors` through the service's own model loader, read batch by batch (a cache
    view stays on disk)."""
    model = load_model(model_path, policy=policy)
    batches = [model.predict(np.ascontiguousarray(tensors[i : i + EVALUATION_BATCH])) for i in range(0, len(tensors), EVALUATION_BATCH)]
    return np.concatenate(batches).astype(np.float64)


def auroc(model_path: Path, tensors: np.ndarray | Cached, labels: np.ndarray, *, policy: ProviderPolicy) -> float:
    """AUROC of the model at `model_path` on `tensors`, scored through the service's own loader."""
    return float(roc_auc_score(labels, scores(model_path, tensors, policy=policy)))


def build_variant(
    source: Path,
    variant: Variant,
    *,
    calibration: np.ndarray,
    evaluation: np.ndarray | Cached,
    labels: np.ndarray,
    policy: ProviderPolicy = "cpu",
    tolerance: float = AUROC_TOLERANCE,
    fp32_auroc: float | None = None,
) -> VariantReport:
    """Build one variant next to `source`; keep it only if its AUROC is within `tolerance` of FP32's.

    `fp32_auroc` is the source's AUROC on `evaluation`, when the caller has measured it already.
    """
    target = variant_path(source, variant)
    if fp32_auroc is None:
        fp32_auroc = auroc(source, evaluation, labels, policy=policy)
    with tempfile.TemporaryDirectory(dir=source.parent) as scratch:
        candidate = Path(scratch) / target.name
        if variant == "int8":
            quantize_int8(source, candidate, calibration)
        else:
            convert_fp16(source, candidate)
        variant_auroc = auroc(candidate, evaluation, labels, policy=policy)
        offered = abs(variant_auroc - fp32_auroc) <= tolerance  # a variant that scores differently is not the same model
        report = VariantReport(variant, variant_auroc, fp32_auroc, len(labels), offered, str(target) if offered else None)
        if offered:
            write_metadata(candidate, source, report)
            candidate.replace(target)
        else:
            target.unlink(missing_ok=True)  # never leave a stale variant that no longer qualifies
    return report


def write_metadata(candidate: Path, source: Path, report: VariantReport) -> None:
    """Copy the source's contract into the variant and add what the variant is and how it scored."""
    contract = {prop.key: prop.value for prop in onnx.load(str(source), load_external_data=False).metadata_props}
    model = onnx.load(str(candidate))
    variant: dict[str, Any] = {
        key: value for key, value in asdict(report).items() if key in ("variant", "auroc", "fp32_auroc", "images")
    }
    variant["source_sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
    variant["auroc_tolerance"] = AUROC_TOLERANCE
    contract["variant"] = json.dumps(variant, sort_keys=True)
    onnx.helper.set_model_props(model, contract)
    onnx.save(model, str(candidate))


def build_run_variants(
    run: Path, model: Path, variants: tuple[Variant, ...] = VARIANTS, *, calibration_images: int = 64
) -> list[VariantReport]:
    """Variants of `model`, calibrated on the run's training images, evaluated on validation + test.

    Both held-out splits are used: with a few dozen images per split, one swapped pair of scores
    moves the AUROC of the test split alone by about 0.004, close to the tolerance itself.
    """
    from model_export.rundir import load_split_tensors, read_config, read_split

    split = read_split(run)
    train, val, test = load_split_tensors(split, read_config(run), ["train", "val", "test"])
    rng = np.random.default_rng(split.seed)
    calibration = train[np.sort(rng.choice(len(train), size=min(calibration_images, len(train)), replace=False))]
    evaluation = np.concatenate([val, test])
    labels = np.array([sample.label for sample in [*split.val, *split.test]])
    fp32_auroc = auroc(model, evaluation, labels, policy="cpu")  # once, not once per variant
    return [
        build_variant(model, variant, calibration=calibration, evaluation=evaluation, labels=labels, fp32_auroc=fp32_auroc)
        for variant in variants
    ]
