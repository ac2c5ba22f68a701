"""Response and error bodies: the OpenAPI contract that clients code against.

The scan's facts (`input`) and the timing record (`timing_ms`) are the core's own dataclasses,
embedded as they are: one type each, from decoder to JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.decode.scan import ScanFacts
from service.predictor import Timing


class ModelInfo(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="SHA-256 of the served ONNX file: pins results to exact weights.")


class Heatmap(BaseModel):
    overlay_png: str = Field(description="Base64 PNG: the 256x256 model input in gray with the heat on top.")
    grid: list[list[float]] = Field(description="16x16 mean heat in [0, 1], rows top to bottom (patient's right on the left).")


class PredictionResponse(BaseModel):
    effusion_probability: float = Field(ge=0.0, le=1.0)
    label: str = Field(description="Class name at the model's decision threshold.")
    threshold: float
    model: ModelInfo
    execution_provider: str = Field(description="The ONNX Runtime provider that actually ran the model.")
    input: ScanFacts
    batch_size: int = Field(description="How many requests shared the inference call.")
    timing_ms: Timing
    request_id: str
    heatmap: Heatmap | None = Field(
        None, description="Class-activation heatmap, with ?heatmap=true and a model that has one (see GET /model)."
    )
    notes: list[str] = Field(default_factory=list, description="Caveats about this answer, e.g. no heatmap available.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. undecodable_image.")
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ReadyResponse(BaseModel):
    ready: bool
    status: str = Field(description="loading, warming, ready, failed or draining.")
    reason: str | None = None
    model: ModelInfo | None = None
    execution_provider: str | None = None


class LiveResponse(BaseModel):
    alive: bool = True


class ModelResponse(BaseModel):
    model: ModelInfo
    execution_provider: str
    preprocessing_id: str
    threshold: float
    class_names: list[str]
    heatmap: bool
    metadata: dict[str, Any] = Field(description="Every metadata entry of the model contract, JSON values decoded.")
