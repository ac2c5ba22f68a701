"""Load an ONNX model, check the contract it carries, pick execution providers, warm up, run batches.

The contract lives in the model file's `metadata_props` (written by model_export/export.py):
a service that does not understand a model's contract refuses it at start-up, because a
model fed the wrong preprocessing still returns confident, wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from service.preprocessing import OUTPUT_SIZE, PREPROCESSING_ID

logger = logging.getLogger(__name__)

CONTRACT_VERSION = "1"
INPUT_NAME = "image"
OUTPUT_NAME = "effusion_probability"
HEATMAP_OUTPUT_NAME = "heatmap"
POSITIVE_CLASS = "effusion"
DEFAULT_CLASS_NAMES = ("no_effusion", POSITIVE_CLASS)
REQUIRED_METADATA = (
    "contract_version",
    "preprocessing_id",
    "threshold",
    "class_names",
    "model_name",
    "model_version",
)
# optional: a model without one of these still loads (initial_weights: where training started from, model_export/init.py)
JSON_METADATA = (
    "class_names", "training_data", "validation_metrics", "calibration", "exporter", "variants", "variant", "threshold_change",
    "initial_weights",
)  # fmt: skip
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# EXHAUSTIVE finds the fastest cuDNN kernels; its cost (100-400 ms per new input shape) is
# paid during warm-up, before /ready says yes. See docs/performance.md.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE"}

ProviderPolicy = Literal["auto", "cuda", "cpu"]


class ModelError(Exception):
    """The model file cannot be served; the message is one line that names the problem."""


@dataclass(frozen=True)
class ModelContract:
    """What a model promises about itself, read from its ONNX metadata."""

    preprocessing_id: str
    threshold: float
    class_names: tuple[str, str]
    model_name: str
    model_version: str
    metadata: dict[str, Any] = field(default_factory=dict)  # every key, JSON values decoded

    def label(self, probability: float) -> str:
        """The class name that the decision threshold assigns to `probability`."""
        return self.class_names[1] if probability >= self.threshold else self.class_names[0]


def contract_metadata(
    *,
    threshold: float,
    model_name: str,
    model_version: str,
    class_names: tuple[str, str] = DEFAULT_CLASS_NAMES,
    **extra: Any,
) -> dict[str, str]:
    """Build the metadata_props a model must carry; the inverse of `parse_contract`.

    Extra entries (training_data, validation_metrics, exporter, created_at, ...) are stored as
    JSON unless they are already strings.
    """
    metadata = {
        "contract_version": CONTRACT_VERSION,
        "preprocessing_id": PREPROCESSING_ID,
        "threshold": repr(float(threshold)),
        "class_names": json.dumps(list(class_names)),
        "model_name": model_name,
        "model_version": model_version,
    }
    for key, value in extra.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return metadata


def parse_contract(metadata: dict[str, str]) -> ModelContract:
    """Validate raw ONNX metadata against the contract this service understands."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelError(f"model metadata lacks the contract keys {', '.join(missing)}")
    if metadata["contract_version"] != CONTRACT_VERSION:
        raise ModelError(
            f"model contract version {metadata['contract_version']!r} is not supported (this service reads {CONTRACT_VERSION!r})"
        )
    if metadata["preprocessing_id"] != PREPROCESSING_ID:
        raise ModelError(
            f"model was trained with preprocessing {metadata['preprocessing_id']!r}, "
            f"but this service implements {PREPROCESSING_ID!r}"
        )
    decoded: dict[str, Any] = dict(metadata)
    for key in JSON_METADATA:
        if key in metadata:
            try:
                decoded[key] = json.loads(metadata[key])
            except json.JSONDecodeError as error:
                raise ModelError(f"model metadata {key!r} is not valid JSON") from error
    try:
        threshold = float(metadata["threshold"])
    except ValueError as error:
        raise ModelError(f"model threshold {metadata['threshold']!r} is not a number") from error
    if not 0.0 < threshold < 1.0:
        raise ModelError(f"model threshold {threshold} is outside (0, 1)")
    classes = decoded["class_names"]
    if not (isinstance(classes, list) and len(classes) == 2 and all(isinstance(c, str) for c in classes)):
        raise ModelError(f"model class_names must be a JSON list of two names, got {metadata['class_names']!r}")
    if classes[1] != POSITIVE_CLASS:
        raise ModelError(f"model class 1 must be {POSITIVE_CLASS!r}, got {classes[1]!r}")
    if not metadata["model_name"] or not metadata["model_version"]:
        raise ModelError("model_name and model_version must not be empty")
    return ModelContract(
        preprocessing_id=metadata["preprocessing_id"],
        threshold=threshold,
        class_names=(classes[0], classes[1]),
        model_name=metadata["model_name"],
        model_version=metadata["model_version"],
        metadata=decoded,
    )


def check_signature(inputs: list[Any], outputs: list[Any]) -> bool:
    """Check graph inputs/outputs (onnxruntime NodeArgs); returns whether a heatmap output exists."""
    if len(inputs) != 1:
        raise ModelError(f"model must have exactly one input, it has {len(inputs)}")
    (image,) = inputs
    if image.name != INPUT_NAME:
        raise ModelError(f"model input is named {image.name!r}, expected {INPUT_NAME!r}")
    if image.type != "tensor(float)":
        raise ModelError(f"model input {INPUT_NAME!r} has type {image.type}, expected tensor(float)")
    shape = list(image.shape)
    if len(shape) != 4 or shape[1:] != [1, OUTPUT_SIZE, OUTPUT_SIZE] or isinstance(shape[0], int):
        raise ModelError(
            f"model input {INPUT_NAME!r} has shape {shape}, expected [N, 1, {OUTPUT_SIZE}, {OUTPUT_SIZE}] with dynamic N"
        )
    by_name = {output.name: output for output in outputs}
    if OUTPUT_NAME not in by_name:
        raise ModelError(f"model has no output {OUTPUT_NAME!r} (outputs: {', '.join(by_name) or 'none'})")
    probability = by_name[OUTPUT_NAME]
    if probability.type != "tensor(float)" or len(probability.shape) != 1:
        raise ModelError(
            f"model output {OUTPUT_NAME!r} is {probability.type} {list(probability.shape)}, expected tensor(float) [N]"
        )
    heatmap = by_name.get(HEATMAP_OUTPUT_NAME)
    if heatmap is not None and (heatmap.type != "tensor(float)" or list(heatmap.shape)[1:] != [OUTPUT_SIZE, OUTPUT_SIZE]):
        raise ModelError(
            f"model output {HEATMAP_OUTPUT_NAME!r} is {heatmap.type} {list(heatmap.shape)}, "
            f"expected tensor(float) [N, {OUTPUT_SIZE}, {OUTPUT_SIZE}]"
        )
    return heatmap is not None


@dataclass(frozen=True)
class ModelFacts:
    """What every response reports about a model, without its session: all a frontend of the shared
    inference process (service/shared_inference.py) holds, sent to it by the process that runs the model."""

    contract: ModelContract
    sha256: str
    has_heatmap: bool
    execution_provider: str


class Model:
    """A validated ONNX Runtime session and the facts every response reports about it."""

    def __init__(self, session: ort.InferenceSession, contract: ModelContract, sha256: str, has_heatmap: bool) -> None:
        self.session = session
        self.contract = contract
        self.sha256 = sha256
        self.has_heatmap = has_heatmap

    @property
    def execution_provider(self) -> str:
        """The provider that really runs the graph (ORT falls back to CPU silently)."""
        return self.session.get_providers()[0]

    @property
    def facts(self) -> ModelFacts:
        return ModelFacts(self.contract, self.sha256, self.has_heatmap, self.execution_provider)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Effusion probabilities, float32 [N], for a float32 [N, 1, 256, 256] batch."""
        (probabilities,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return probabilities

    def predict_with_heatmap(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N] and class-activation heatmaps [N, 256, 256] from one run of the graph."""
        probabilities, heatmaps = self.session.run([OUTPUT_NAME, HEATMAP_OUTPUT_NAME], {INPUT_NAME: batch})
        return probabilities, heatmaps

    def warm_up(self, batch_sizes: list[int], runs: int) -> None:
        """Run every batch size the batcher may form, so no client pays first-run costs."""
        for size in batch_sizes:
            batch = np.zeros((size, 1, OUTPUT_SIZE, OUTPUT_SIZE), dtype=np.float32)
            for _ in range(runs):
                if self.predict(batch).shape != (size,):
                    raise ModelError(f"model returned the wrong number of probabilities for a batch of {size}")
                if self.has_heatmap:
                    self.predict_with_heatmap(batch)

    def provider_problem(self, policy: ProviderPolicy) -> str | None:
        """Why the active provider does not satisfy `policy`, or None when it does."""
        active = self.execution_provider
        if policy == "cuda" and active != CUDA:
            return f"execution provider 'cuda' was requested but {active} is active (is a GPU visible with CUDA 13 and cuDNN 9?)"
        if policy == "cpu" and active != CPU:
            return f"execution provider 'cpu' was requested but {active} is active"
        return None


def load_model(
    path: Path, *, policy: ProviderPolicy = "auto", intra_op_threads: int = 1, variant_of: Path | None = None
) -> Model:
    """Read, validate and open a model; raises ModelError with one line naming any problem.

    `variant_of` names the FP32 file an INT8/FP16 variant is served in place of: the variant
    must have been built from exactly that file, or other weights would run silently.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read model file {path}: {error.strerror or error}") from error
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(intra_op_threads), providers=providers_for(policy)
        )
    except Exception as error:  # ORT raises its own types for invalid graphs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"model file {path} is not a loadable ONNX model: {first_line}") from error
    has_heatmap = check_signature(session.get_inputs(), session.get_outputs())
    contract = parse_contract(session.get_modelmeta().custom_metadata_map)
    if variant_of is not None:
        check_variant_source(contract, variant_of)
    return Model(session, contract, hashlib.sha256(data).hexdigest(), has_heatmap)


def check_variant_source(contract: ModelContract, source: Path) -> None:
    """Refuse a variant whose metadata names another FP32 model than `source`."""
    facts = contract.metadata.get("variant")
    if not isinstance(facts, dict) or "source_sha256" not in facts:
        raise ModelError("the variant file has no 'variant' metadata naming the FP32 model it was built from")
    try:
        expected = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    except OSError as error:
        raise ModelError(f"cannot read the FP32 model {source}: {error.strerror or error}") from error
    if facts["source_sha256"] != expected:
        raise ModelError(
            f"the variant was built from another model (sha256 {facts['source_sha256'][:12]}...), not from {source} "
            f"({expected[:12]}...); rebuild it with `python -m model_export variants`"
        )


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """One session per process, with threads sized to the CPU quota and no busy-waiting.

    Spinning threads would steal the cores that decode uploads; see docs/performance.md.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def providers_for(policy: ProviderPolicy) -> list[Any]:
    """Providers to ask ONNX Runtime for; what it really uses is checked afterwards."""
    if policy == "cpu" or CUDA not in ort.get_available_providers():
        return [CPU]
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, before the session needs them
        except Exception as error:  # a missing library means CUDA will not come up; readiness reports it
            logger.warning("could not preload CUDA libraries: %s", error)
    return [(CUDA, CUDA_OPTIONS), CPU]
