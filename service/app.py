"""HTTP layer: routes, error bodies and the service lifecycle. No image or model logic lives here."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.batching import MicroBatcher
from service.errors import ServiceError
from service.model import Model, load_model
from service.predictor import Prediction, Predictor
from service.readiness import Readiness
from service.resources import available_cpus
from service.schemas import (
    ErrorResponse,
    InputInfo,
    LiveResponse,
    ModelInfo,
    ModelResponse,
    PredictionResponse,
    ReadyResponse,
    Timing,
)
from service.settings import Settings
from service.uploads import read_upload

logger = logging.getLogger("service")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 413, 415, 422, 503)
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "PNG, JPEG or DICOM scan"}},
                }
            },
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class ServiceState:
    """What the routes need, created at start-up."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.readiness = Readiness()
        self.model: Model | None = None
        self.predictor: Predictor | None = None


class RequestIdMiddleware:
    """Give every request an id (the client's X-Request-ID when it is sane) and echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(settings: Settings | None = None, *, model: Model | None = None) -> FastAPI:
    """Build the app; pass an already loaded `model` to skip loading (python -m service does)."""
    settings = settings or Settings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threads = settings.intra_op_threads or available_cpus()
        loaded = model or await anyio.to_thread.run_sync(
            lambda: load_model(settings.model_path, policy=settings.execution_provider, intra_op_threads=threads)
        )
        batcher = MicroBatcher(
            loaded.predict,
            max_batch=settings.max_batch,
            max_delay_s=settings.max_delay_ms / 1000.0,
            max_queue=settings.max_queue,
        )
        predictor = Predictor(
            loaded,
            batcher,
            decode_threads=settings.decode_threads or available_cpus(),
            max_pixels=settings.max_pixels,
        )
        state.model, state.predictor = loaded, predictor
        problem = loaded.provider_problem(settings.execution_provider)
        if problem is None:
            state.readiness.set("warming", "warming up every batch size")
            warm_up = asyncio.create_task(_warm_up(state, loaded))
        else:
            logger.error("not ready: %s", problem)
            state.readiness.set("failed", problem)
            warm_up = None
        batcher.start()
        try:
            yield
        finally:
            state.readiness.set("draining", "the service is shutting down")
            if warm_up is not None:
                warm_up.cancel()
            await batcher.stop()
            predictor.close()

    app = FastAPI(
        title="cxr-effusion",
        version=__version__,
        summary="Pleural effusion probability for a chest X-ray. Research and integration use, not for clinical use.",
        lifespan=lifespan,
    )
    app.state.service = state
    app.add_middleware(RequestIdMiddleware)
    _add_error_handlers(app)

    @app.post("/predict", response_model=PredictionResponse, responses=ERROR_RESPONSES, openapi_extra=UPLOAD_BODY)
    async def predict(request: Request) -> PredictionResponse:
        """Score one scan: multipart field `file`, or a raw PNG/JPEG/DICOM body."""
        predictor = _ready_predictor(state)
        data = await read_upload(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            max_bytes=settings.max_upload_bytes,
        )
        prediction = await predictor.predict(data)
        return _prediction_response(prediction, predictor.model, request.state.request_id)

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready() -> JSONResponse:
        """200 only when the model is loaded, checked, on the requested provider and warmed up."""
        body = ReadyResponse(ready=state.readiness.ready, status=state.readiness.status, reason=state.readiness.reason)
        if state.model is not None:
            body.model = _model_info(state.model)
            body.execution_provider = state.model.execution_provider
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/live", response_model=LiveResponse)
    async def live() -> LiveResponse:
        """The process is alive and its event loop answers; checks no dependency."""
        return LiveResponse()

    @app.get("/model", response_model=ModelResponse, responses={503: {"model": ErrorResponse}})
    async def model_card() -> ModelResponse:
        """The served model's contract, metrics and provenance."""
        if state.model is None:
            raise ServiceError("not_ready", state.readiness.reason or "the model is not loaded")
        contract = state.model.contract
        return ModelResponse(
            model=_model_info(state.model),
            execution_provider=state.model.execution_provider,
            preprocessing_id=contract.preprocessing_id,
            threshold=contract.threshold,
            class_names=list(contract.class_names),
            heatmap=state.model.has_heatmap,
            metadata=contract.metadata,
        )

    return app


async def _warm_up(state: ServiceState, model: Model) -> None:
    settings = state.settings
    try:
        sizes = list(range(1, settings.max_batch + 1))
        await anyio.to_thread.run_sync(lambda: model.warm_up(sizes, settings.warmup_runs))
    except Exception as error:
        logger.error("warm-up failed: %s", error)
        state.readiness.set("failed", f"warm-up failed: {type(error).__name__}")
        return
    state.readiness.set("ready")
    logger.info(
        "ready: model %s %s on %s", model.contract.model_name, model.contract.model_version, model.execution_provider
    )


def _ready_predictor(state: ServiceState) -> Predictor:
    if not state.readiness.ready or state.predictor is None:
        raise ServiceError("not_ready", state.readiness.reason or "the service is not ready", retry_after=5)
    return state.predictor


def _model_info(model: Model) -> ModelInfo:
    return ModelInfo(name=model.contract.model_name, version=model.contract.model_version, sha256=model.sha256)


def _prediction_response(prediction: Prediction, model: Model, request_id: str) -> PredictionResponse:
    image = prediction.image
    return PredictionResponse(
        effusion_probability=prediction.probability,
        label=prediction.label,
        threshold=model.contract.threshold,
        model=_model_info(model),
        execution_provider=model.execution_provider,
        input=InputInfo(
            format=image.format,
            width=image.width,
            height=image.height,
            mode=image.mode,
            converted=image.converted,
            sop_instance_uid=image.sop_instance_uid,
        ),
        batch_size=prediction.batch_size,
        timing_ms=Timing(**prediction.timing_ms),
        request_id=request_id,
    )


def error_response(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body shape: {"error": {"code", "message", "request_id"}}."""
    request_id = getattr(request.state, "request_id", "")
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ServiceError)
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
        return error_response(request, error.status_code, error.code, error.message, headers)

    async def validation_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(request, 422, "invalid_request", "the request is malformed")

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(request, error.status_code, code, str(error.detail), getattr(error, "headers", None))

    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.error("unhandled %s on %s", type(error).__name__, request.url.path)
        return error_response(request, 500, "internal_error", "an unexpected error occurred")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
