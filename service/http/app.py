"""HTTP layer: routes, error bodies and the service lifecycle. No image or model logic lives here."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from service import __version__
from service.decode import png
from service.decode.formats import FORMATS, NAMES
from service.errors import ErrorCode, ServiceError
from service.http.admission import Admission
from service.http.auth import PROBE_PATHS, ApiKeyMiddleware, KeyChecker, document_security, load_api_keys
from service.http.errors import add_error_handlers
from service.http.metrics import Metrics
from service.http.negotiation import DICOM_MEDIA_TYPE, FHIR_MEDIA_TYPE, MULTIPART_MEDIA_TYPE, ResultFormat, result_format
from service.http.observability import RequestObserver
from service.http.prefix import PathPrefix
from service.http.readiness import Readiness
from service.http.results import check_dicom_result_possible, dicom_response, fhir_response
from service.http.schemas import (
    ErrorResponse,
    Heatmap,
    LiveResponse,
    ModelInfo,
    ModelResponse,
    PredictionResponse,
    ReadyResponse,
    VariantInfo,
)
from service.http.ui import UI_PATHS, add_ui_routes
from service.http.uploads import read_upload
from service.memory import admission_limit
from service.model import Model, ModelFacts
from service.predictor import Prediction, Predictor, batcher_for
from service.settings import Settings
from service.shared_inference import FrontendPlan, InferenceClient, Welcome
from service.variant_choice import ServedModel, load_served_model

logger = logging.getLogger("service")

BINARY = {"schema": {"type": "string", "format": "binary"}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 413, 415, 422, 503)
}
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": "The prediction: JSON by default; by the Accept header a FHIR R4 Bundle, or for DICOM input a DICOM "
        "Structured Report (with `?heatmap=true`, multipart/related with the heatmap's Secondary Capture too); docs/pacs.md",
        "content": {FHIR_MEDIA_TYPE: {"schema": {"type": "object"}}, DICOM_MEDIA_TYPE: BINARY, MULTIPART_MEDIA_TYPE: BINARY},
    },
    406: {"model": ErrorResponse, "description": "a DICOM result asked for a PNG or JPEG upload"},
}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": f"{NAMES} scan"}},
                }
            },
            **{fmt.media_types[0]: BINARY for fmt in FORMATS},
        },
    }
}


class ServiceState:
    """What the routes need, created at start-up."""

    def __init__(self, settings: Settings, frontend: FrontendPlan | None = None) -> None:
        self.settings = settings
        self.readiness = Readiness()
        self.served: ServedModel | None = None
        self.predictor: Predictor | None = None
        self.metrics = Metrics()
        if frontend is None:
            self.admission = Admission(admission_limit(settings))
        else:  # the host's bound, counted across frontends
            self.admission = Admission(admission_limit(settings), frontend.in_flight, frontend.index)
        self.metrics.is_ready = lambda: self.readiness.ready

    def drain(self) -> None:
        """SIGTERM arrived: /ready says 503 and new work is refused from now on."""
        self.readiness.set("draining", "the service is shutting down")


def create_app(
    settings: Settings | None = None, *, served: ServedModel | None = None, frontend: FrontendPlan | None = None
) -> FastAPI:
    """Build the app; pass an already loaded model to skip loading (python -m service does), or the plan of a
    frontend of the shared inference process (`CXR_INFERENCE=shared`), which loads no model."""
    settings = settings or Settings()
    state = ServiceState(settings, frontend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        serving = _own_model(state, served) if frontend is None else _shared_inference(state, frontend)
        async with serving:
            yield

    app = FastAPIOffline(  # a FastAPI app whose /docs and /redoc load their assets from this service, never a CDN
        title="cxr-effusion",
        version=__version__,
        summary="Pleural effusion probability for a chest X-ray. Research and integration use, not for clinical use.",
        lifespan=lifespan,
        root_path=settings.root_path,  # at the app, not uvicorn: uvicorn's would prefix paths a gateway already kept
    )
    app.state.service = state
    add_error_handlers(app)

    @app.post("/predict", response_model=PredictionResponse, responses=PREDICT_RESPONSES, openapi_extra=UPLOAD_BODY)
    async def predict(request: Request, heatmap: bool = False) -> Any:
        """Score one scan: multipart field `file`, or a raw PNG/JPEG/DICOM body. `?heatmap=true` adds the heatmap.
        The Accept header picks the answer's format (JSON unless another is named)."""
        predictor = _ready_predictor(state)
        wanted = result_format(request.headers.get("accept"))
        with state.admission.slot():
            data = await read_upload(
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                request.stream(),
                max_bytes=settings.max_upload_bytes,
            )
            if wanted is ResultFormat.DICOM:
                check_dicom_result_possible(data)
            prediction = await predictor.predict(data, heatmap=heatmap and wanted is not ResultFormat.FHIR)  # FHIR has no heatmap
            if wanted is ResultFormat.FHIR:
                return await fhir_response(data, prediction, predictor.model)
            if wanted is ResultFormat.DICOM:
                return await dicom_response(data, prediction, predictor.model, heatmap=heatmap)
        response = _prediction_response(prediction, predictor.model, request.state.request_id)
        if heatmap and not predictor.model.has_heatmap:
            response.notes.append("this model has no heatmap output; see GET /model")
        return response

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def ready() -> JSONResponse:
        """200 only when the model is loaded, checked, on the requested provider and warmed up."""
        body = ReadyResponse(ready=state.readiness.ready, status=state.readiness.status, reason=state.readiness.reason)
        if state.served is not None:
            body.model = _model_info(state.served.model)
            body.execution_provider = state.served.model.execution_provider
            body.variant = _variant_info(state.served)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/live", response_model=LiveResponse)
    async def live() -> LiveResponse:
        """The process is alive and its event loop answers; checks no dependency."""
        return LiveResponse()

    @app.get("/model", response_model=ModelResponse, responses={503: {"model": ErrorResponse}})
    async def model_card() -> ModelResponse:
        """The served model's contract, metrics and provenance."""
        if state.served is None:
            raise ServiceError(ErrorCode.NOT_READY, state.readiness.reason or "the model is not loaded")
        contract = state.served.model.contract
        return ModelResponse(
            model=_model_info(state.served.model),
            variant=_variant_info(state.served),
            execution_provider=state.served.model.execution_provider,
            preprocessing_id=contract.preprocessing_id,
            threshold=contract.threshold,
            class_names=list(contract.class_names),
            heatmap=state.served.model.has_heatmap,
            metadata=contract.metadata,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus exposition of this app's registry."""
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    add_ui_routes(app)
    _add_middleware(app, state)
    return app


def _add_middleware(app: FastAPI, state: ServiceState) -> None:
    """Outermost first: the gateway's path prefix; request id, metrics and log line; CORS; API keys; then the routes."""
    settings = state.settings
    keys = load_api_keys(settings.api_keys.get_secret_value() if settings.api_keys else None, settings.api_keys_file)
    if keys:
        open_paths = PROBE_PATHS | UI_PATHS  # the page holds no data; its calls to /predict carry the key
        if settings.metrics_public:
            open_paths |= {"/metrics"}
        app.add_middleware(ApiKeyMiddleware, checker=KeyChecker(keys), open_paths=open_paths)
        app.openapi_schema = document_security(app.openapi(), open_paths)
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    known_paths = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(RequestObserver, metrics=state.metrics, known_paths=known_paths)
    if settings.root_path:
        app.add_middleware(PathPrefix, root_path=settings.root_path)


@asynccontextmanager
async def _own_model(state: ServiceState, served: ServedModel | None) -> AsyncIterator[None]:
    """One process: load (unless given), warm up and run the model here, with its own micro-batcher."""
    settings = state.settings
    state.served = served or await anyio.to_thread.run_sync(load_served_model, settings)
    loaded = state.served.model
    assert isinstance(loaded, Model)
    batcher = batcher_for(loaded, settings)
    predictor = Predictor.from_settings(loaded, batcher, settings)
    state.predictor = predictor
    state.metrics.watch(batcher, loaded)
    problem = loaded.provider_problem(settings.execution_provider)
    if problem is None:
        state.readiness.set("warming", "warming up every batch size")
        warm_up = asyncio.create_task(_warm_up(state, predictor))
    else:
        logger.error("not ready: %s", problem)
        state.readiness.set("failed", problem)
        warm_up = None
    batcher.start()
    try:
        yield
    finally:
        state.drain()
        if warm_up is not None:
            warm_up.cancel()
        await batcher.stop()
        predictor.close()


@asynccontextmanager
async def _shared_inference(state: ServiceState, plan: FrontendPlan) -> AsyncIterator[None]:
    """A frontend: decode here, infer in the host's inference process; ready only when it is and every frontend is up."""
    client = InferenceClient(address=plan.address, authkey=plan.authkey, block=plan.block, slots=plan.slots, frontend=plan.index)
    client.start()
    state.readiness.set("warming", "waiting for the inference process")
    follow = asyncio.create_task(_follow_host(state, client, plan))
    try:
        yield
    finally:
        state.drain()
        follow.cancel()
        plan.up[plan.index] = 0
        await client.stop()
        if state.predictor is not None:
            state.predictor.close()


async def _follow_host(state: ServiceState, client: InferenceClient, plan: FrontendPlan) -> None:
    """Keep this frontend's readiness the host's: the inference process connected (it opens its socket only once
    warm) and every frontend up. Polled, because the other processes tell nothing: a death is a closed socket or a
    cell the supervisor zeroed."""
    welcome: Welcome | None = None
    while True:
        if client.welcome is not None and client.welcome is not welcome:  # a first or a replaced inference process
            welcome = client.welcome
            state.served = ServedModel(welcome.facts, welcome.variant, welcome.reason)
            state.metrics.identify(welcome.facts)
            if state.predictor is None:
                predictor = Predictor.from_settings(welcome.facts, client, state.settings)
                try:
                    await anyio.to_thread.run_sync(predictor.start_decoders)
                except Exception as error:
                    logger.error("warm-up failed: %s", error)
                    state.readiness.set("failed", f"warm-up failed: {type(error).__name__}")
                    return
                state.predictor = predictor
                plan.up[plan.index] = 1
            state.predictor.model = welcome.facts
        waiting = sum(1 for up in plan.up if not up)
        if not client.connected:
            state.readiness.set("warming", "waiting for the inference process (starting, or replacing one that stopped)")
        elif welcome is not None and welcome.problem is not None:
            state.readiness.set("failed", welcome.problem)
        elif waiting:
            state.readiness.set("warming", f"{waiting} of {len(plan.up)} frontends are starting")
        elif state.readiness.status != "ready":
            state.readiness.set("ready")
            logger.info("ready: frontend %d of the shared inference process (%s)", plan.index, client.welcome.facts.execution_provider if client.welcome else "?")
        await asyncio.sleep(0.05)


async def _warm_up(state: ServiceState, predictor: Predictor) -> None:
    settings, model = state.settings, predictor.model
    try:
        sizes = list(range(1, settings.max_batch + 1))
        await anyio.to_thread.run_sync(lambda: model.warm_up(sizes, settings.warmup_runs))
        await anyio.to_thread.run_sync(predictor.start_decoders)
    except Exception as error:
        logger.error("warm-up failed: %s", error)
        state.readiness.set("failed", f"warm-up failed: {type(error).__name__}")
        return
    state.readiness.set("ready")
    served = state.served
    logger.info(
        "ready: model %s %s, variant %s (%s), on %s; PNG decoder: %s",
        model.contract.model_name,
        model.contract.model_version,
        served.variant if served else "?",
        served.reason if served else "?",
        model.execution_provider,
        "fast path (service/decode/png.py)" if png.available() else "Pillow only (service.decode._pngfilter was not built)",
    )


def _ready_predictor(state: ServiceState) -> Predictor:
    if not state.readiness.ready or state.predictor is None:
        raise ServiceError(ErrorCode.NOT_READY, state.readiness.reason or "the service is not ready", retry_after=5)
    return state.predictor


def _model_info(model: Model | ModelFacts) -> ModelInfo:
    return ModelInfo(name=model.contract.model_name, version=model.contract.model_version, sha256=model.sha256)


def _variant_info(served: ServedModel) -> VariantInfo:
    return VariantInfo(name=served.variant, reason=served.reason)


def _prediction_response(prediction: Prediction, model: Model | ModelFacts, request_id: str) -> PredictionResponse:
    return PredictionResponse(
        effusion_probability=prediction.probability,
        label=prediction.label,
        threshold=model.contract.threshold,
        model=_model_info(model),
        execution_provider=model.execution_provider,
        input=prediction.image,
        batch_size=prediction.batch_size,
        timing_ms=prediction.timing_ms,
        request_id=request_id,
        heatmap=None
        if prediction.heatmap is None
        else Heatmap(
            overlay_png=base64.b64encode(prediction.heatmap.overlay_png).decode("ascii"),
            grid=prediction.heatmap.grid,
        ),
    )
