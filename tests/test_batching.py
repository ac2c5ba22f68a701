"""Micro-batching and decode pools: no wait when idle, shared batches under load, no cross-request leakage."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.batching import MicroBatcher
from service.errors import ErrorCode, ServiceError
from service.http.app import create_app
from service.model import Model, load_model
from service.preprocessing import preprocess
from testkit.images import png_bytes
from testkit.model_factory import expected_probability
from tests.conftest import make_settings, wait_ready


def distinct_scans(count: int) -> list[np.ndarray]:
    """Scans whose preprocessed means differ, so each has its own probability under the mean model."""
    rows = np.arange(256, dtype=np.float64)[:, None]
    return [np.clip(rows * (1 + i) + np.zeros((256, 256)), 0, 255).astype(np.uint8) for i in range(count)]


def test_lone_request_runs_at_once_alone(mean_model: Path) -> None:
    model = load_model(mean_model, policy="cpu")

    async def scenario() -> tuple[float, int]:
        batcher = MicroBatcher(model.predict, max_batch=8, max_delay_s=0.5, max_queue=8)
        batcher.start()
        started = time.perf_counter()
        result = await batcher.submit(preprocess(distinct_scans(1)[0]))
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed, result.batch_size

    elapsed, batch_size = asyncio.run(scenario())
    assert batch_size == 1
    assert elapsed < 0.25, f"a lone request waited {elapsed:.3f}s for company"


def test_concurrent_requests_share_a_batch_and_each_gets_its_own_probability(mean_model: Path) -> None:
    model = load_model(mean_model, policy="cpu")
    tensors = [preprocess(scan) for scan in distinct_scans(6)]
    sizes: list[int] = []

    async def scenario() -> list[float]:
        batcher = MicroBatcher(model.predict, max_batch=8, max_delay_s=0.002, max_queue=8)
        batcher.on_batch = lambda size, seconds: sizes.append(size)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(tensor) for tensor in tensors))
        await batcher.stop()
        assert all(result.batch_size == len(tensors) for result in results)
        return [result.probability for result in results]

    probabilities = asyncio.run(scenario())
    assert sizes == [len(tensors)]  # one inference call for all six
    expected = [expected_probability(tensor) for tensor in tensors]
    assert len(set(np.round(expected, 6))) == len(tensors)  # the scans really differ
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)  # ORT averages in float32


def test_full_queue_is_refused_at_once_with_retry_after() -> None:
    release = threading.Event()

    def blocked_inference(batch: np.ndarray) -> np.ndarray:
        release.wait(10)
        return np.zeros(len(batch), dtype=np.float32)

    async def scenario() -> None:
        batcher = MicroBatcher(blocked_inference, max_batch=1, max_delay_s=0.0, max_queue=2)
        batcher.start()
        tensor = np.zeros((1, 1, 256, 256), dtype=np.float32)
        running = asyncio.create_task(batcher.submit(tensor))
        await asyncio.sleep(0.05)  # the worker has taken it and is inside inference
        waiting = [asyncio.create_task(batcher.submit(tensor)) for _ in range(2)]
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        with pytest.raises(ServiceError) as refused:
            await batcher.submit(tensor)
        assert time.perf_counter() - started < 0.05
        assert refused.value.code == ErrorCode.OVERLOADED
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
        release.set()
        await asyncio.gather(running, *waiting)  # the admitted ones still finish
        await batcher.stop()

    asyncio.run(scenario())


class RecordingModel(Model):
    """The real model, noting every batch size it runs (the app's warm-up included)."""

    def __init__(self, model: Model) -> None:
        super().__init__(model.session, model.contract, model.sha256, model.has_heatmap)
        self.sizes: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        return super().predict(batch)


def test_every_batch_size_is_warmed_before_ready(mean_model: Path) -> None:
    model = RecordingModel(load_model(mean_model, policy="cpu"))
    with TestClient(create_app(make_settings(mean_model, max_batch=6), model=model)) as client:
        wait_ready(client)
        warmed = set(model.sizes)
    assert warmed >= set(range(1, 7))


@pytest.mark.parametrize("decode_processes", [0, 2], ids=["threads", "processes"])
def test_http_requests_share_batches_without_leakage(slow_model: Path, decode_processes: int) -> None:
    scans = distinct_scans(8)
    reference = load_model(slow_model, policy="cpu")
    expected = [float(reference.predict(preprocess(scan))[0]) for scan in scans]
    settings = make_settings(slow_model, max_batch=8, max_delay_ms=20, decode_processes=decode_processes)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=60)
        with ThreadPoolExecutor(len(scans)) as pool:
            responses = list(pool.map(lambda scan: client.post("/predict", content=png_bytes(scan), headers={"Content-Type": "image/png"}), scans))
        refused = client.post("/predict", content=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, headers={"Content-Type": "image/png"})
    bodies = [response.json() for response in responses]
    assert all(response.status_code == 200 for response in responses), bodies
    assert max(body["batch_size"] for body in bodies) > 1, "no two requests shared a batch"
    np.testing.assert_allclose([body["effusion_probability"] for body in bodies], expected, atol=1e-5)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "undecodable_image"


def test_a_model_answering_the_wrong_shape_fails_its_requests_not_the_worker() -> None:
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.full(len(batch) + (1 if len(calls) == 1 else 0), 0.5, dtype=np.float32)  # first call: one too many

    async def scenario() -> None:
        batcher = MicroBatcher(flaky, max_batch=4, max_delay_s=0.0, max_queue=4)
        batcher.start()
        tensor = np.zeros((1, 1, 256, 256), dtype=np.float32)
        with pytest.raises(ServiceError) as error:
            await batcher.submit(tensor)
        assert error.value.code == "internal_error"
        assert (await batcher.submit(tensor)).probability == 0.5  # the worker survived
        await batcher.stop()

    asyncio.run(scenario())
