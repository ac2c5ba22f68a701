"""The shared inference process without the web server: a real process owns the model, two frontends' clients
hand it tensors through shared memory, and every request gets its own answer, the same as in one process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import pytest

from service.errors import ErrorCode, ServiceError
from service.model import load_model
from service.predictor import batcher_for, prepare
from service.settings import Settings
from service.shared_inference import InferenceClient, create_slots, run_inference, shared_memory_problem
from service.variant_choice import load_served_model
from testkit.model_factory import build_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCANS = sorted(EXAMPLES.rglob("*.png")) + sorted(EXAMPLES.rglob("*.dcm"))
AUTHKEY = b"test-authkey-of-32-bytes-exactly"


def inference_main(model_path: str, address: str) -> None:
    """The inference process of these tests (spawned): the service's own road, minus the supervisor's metrics."""
    settings = Settings(model_path=Path(model_path), execution_provider="cpu", warmup_runs=1, max_batch=4, max_delay_ms=20)
    served = load_served_model(settings)
    batcher = batcher_for(served.model, settings)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await run_inference(served, batcher, settings, address=address, authkey=AUTHKEY, stop=stop)

    asyncio.run(main())


@pytest.fixture(scope="module")
def heat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mean model with a heatmap output that is the input itself: a request's heatmap shows whose tensor ran."""
    return build_model(tmp_path_factory.mktemp("shared") / "heat.onnx", heatmap_shape=("N", 256, 256))


@contextmanager
def inference_process(model: Path, address: str) -> Iterator[BaseProcess]:
    process = multiprocessing.get_context("spawn").Process(target=inference_main, args=(str(model), address))
    process.start()
    try:
        yield process
    finally:
        if process.is_alive():
            process.kill()
        process.join(timeout=30)


@pytest.fixture()
def address() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield os.path.join(folder, "inference.sock")


async def connected(*clients: InferenceClient, timeout: float = 120.0) -> None:
    """Wait (on the condition, generously: spawning and warming on a loaded machine) until every client is connected."""
    async with asyncio.timeout(timeout):
        while not all(client.connected for client in clients):
            await asyncio.sleep(0.05)


def tensors() -> list[np.ndarray]:
    return [prepare(path.read_bytes(), 25_000_000).tensor for path in SCANS]


def test_two_frontends_get_their_own_results_equal_to_one_process(heat_model: Path, address: str) -> None:
    scans = tensors()
    expected = load_model(heat_model, policy="cpu").predict(np.concatenate(scans))
    blocks = [create_slots(8), create_slots(8)]

    async def scenario() -> list[tuple[int, float, np.ndarray | None, int]]:
        clients = [InferenceClient(address=address, authkey=AUTHKEY, block=b.name, slots=8, frontend=i) for i, b in enumerate(blocks)]
        for client in clients:
            client.start()
        await connected(*clients)
        assert clients[0].welcome is not None and clients[0].welcome.facts.has_heatmap
        jobs = [(index, clients[(index + round_) % 2]) for round_ in range(3) for index in range(len(scans))]
        results = await asyncio.gather(*(client.submit(scans[index], heatmap=index % 2 == 0) for index, client in jobs))
        for client in clients:
            await client.stop()
        return [(index, r.probability, r.heatmap, r.batch_size) for (index, _), r in zip(jobs, results, strict=True)]

    try:
        with inference_process(heat_model, address):
            outcomes = asyncio.run(scenario())
    finally:
        for block in blocks:
            block.close()
            block.unlink()
    for index, probability, heatmap, _ in outcomes:
        assert abs(probability - float(expected[index])) <= 1e-6
        if index % 2 == 0:  # asked for: its own tensor came back, not a neighbour's
            assert heatmap is not None and np.array_equal(heatmap, scans[index][0, 0])
        else:
            assert heatmap is None
    assert max(batch for *_, batch in outcomes) > 1, "no batch was shared: the test proved nothing about batching"


def test_a_frontend_without_a_free_slot_is_refused_at_once(mean_model: Path, address: str) -> None:
    block = create_slots(1)
    scan = tensors()[0]

    async def scenario() -> list[object]:
        client = InferenceClient(address=address, authkey=AUTHKEY, block=block.name, slots=1)
        client.start()
        await connected(client)
        outcomes = await asyncio.gather(client.submit(scan), client.submit(scan), return_exceptions=True)
        await client.stop()
        return outcomes

    try:
        with inference_process(mean_model, address):
            first, second = asyncio.run(scenario())
    finally:
        block.close()
        block.unlink()
    assert not isinstance(first, BaseException)
    assert isinstance(second, ServiceError) and second.code == ErrorCode.OVERLOADED and second.retry_after


def test_a_killed_inference_process_fails_waiting_requests_and_a_new_one_is_found(mean_model: Path, address: str) -> None:
    slow = build_model(Path(address).with_name("slow.onnx"), slow=True)
    block = create_slots(64)
    scan = tensors()[0]
    expected = float(load_model(mean_model, policy="cpu").predict(scan)[0])

    async def scenario() -> None:
        client = InferenceClient(address=address, authkey=AUTHKEY, block=block.name, slots=64)
        client.start()
        with inference_process(slow, address) as process:
            await connected(client)
            waiting = [asyncio.ensure_future(client.submit(scan)) for _ in range(64)]  # a queue of slow batches
            await asyncio.sleep(0)  # every one is sent
            process.kill()
            async with asyncio.timeout(60):  # never a hang
                outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, ServiceError)]
        assert refused and all(error.code == ErrorCode.NOT_READY and error.retry_after for error in refused)
        assert not client.connected
        with pytest.raises(ServiceError) as meanwhile:
            await client.submit(scan)
        assert meanwhile.value.code == ErrorCode.NOT_READY
        with inference_process(mean_model, address):  # the replacement: the client finds it by itself
            await connected(client)
            result = await client.submit(scan)
            assert abs(result.probability - expected) <= 1e-6
        await client.stop()

    try:
        asyncio.run(scenario())
    finally:
        block.close()
        block.unlink()


def test_too_little_shared_memory_is_named_before_start_up(tmp_path: Path) -> None:
    assert shared_memory_problem(2, 72, str(tmp_path)) is None
    problem = shared_memory_problem(10**9, 72, str(tmp_path))
    assert problem is not None and "--shm-size" in problem and "CXR_MAX_QUEUE" in problem
