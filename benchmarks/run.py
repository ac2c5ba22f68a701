"""Every benchmark in one run, written to benchmarks/RESULTS.md with a plot.

    python -m benchmarks.run                  # about 8 minutes on 2 cores
    python -m benchmarks.run --quick          # a rehearsal: short runs, fewer sizes

(a) raw ONNX Runtime on ready tensors, batch 1..32, FP32 and INT8; (b) decode + preprocess cost
per scan, the straightforward way and the service's; (c) the in-process pipeline ceiling (the
service's decode + preprocess + batched inference with all cores, no HTTP); (d) the service, the
naive FastAPI baseline and Triton (PyTriton, dynamic batching) under `hey` at several
concurrencies; (e) one process vs two workers (the service's own, the shared inference process, uvicorn's).

The load generator is `hey` (Go): its CPU use is measured and reported, since on a 2-core machine
any client takes CPU from the server. Triton runs from its own virtual environment
(`--triton-python`, see benchmarks/requirements.txt) and is skipped when that is absent.
Speed does not depend on weights: the model is a random-weight ResNet18 of the shipped graph.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from benchmarks.common import CACHE, DEFAULT_DATA, MAX_PIXELS, REPO_ROOT, Server, log, nih_scans
from benchmarks.loadgen import Body, multipart_body, run_hey, triton_body
from benchmarks.naive_recipe import naive_tensor
from benchmarks.resnet18 import benchmark_model
from service.batching import MicroBatcher
from service.decode import decode
from service.model import INPUT_NAME, OUTPUT_NAME, load_model, session_options
from service.predictor import Predictor
from service.prepare import prepare
from service.preprocessing import preprocess
from service.resources import available_cpus
from service.settings import Settings, variant_path
from testkit.live_server import every_process_ready


def int8_model(fp32: Path, scans: list[bytes]) -> Path:
    """The INT8 variant of the benchmark model, calibrated on real scans (cached)."""
    from model_export.variants import quantize_int8

    target = variant_path(fp32, "int8")
    if not target.exists():
        calibration = np.concatenate([prepare(scan, MAX_PIXELS).tensor for scan in scans[:32]])
        quantize_int8(fp32, target, calibration)
    return target


def rate(function: Callable[[], object], items: int, seconds: float) -> float:
    function()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function()
        count += 1
    return count * items / (time.perf_counter() - started)


def raw_inference(models: dict[str, Path], sizes: list[int], seconds: float) -> dict[str, dict[int, float]]:
    """(a) images/s of ONNX Runtime alone on ready tensors, all cores, per batch size."""
    results: dict[str, dict[int, float]] = {}
    for name, path in models.items():
        session = ort.InferenceSession(str(path), session_options(available_cpus()), providers=["CPUExecutionProvider"])
        results[name] = {}
        for size in sizes:
            batch = np.random.default_rng(size).random((size, 1, 256, 256), dtype=np.float32)
            results[name][size] = round(rate(lambda: session.run([OUTPUT_NAME], {INPUT_NAME: batch}), size, seconds), 1)
        log(f"(a) raw {name}: {results[name]}")
    return results


def per_scan_costs(scans: list[bytes], repeats: int) -> dict[str, float]:
    """(b) milliseconds per scan on one thread: decode and preprocess, the straightforward way and the service's."""

    def median_ms(function: Callable[[bytes], object]) -> float:
        times = []
        for _ in range(repeats):
            for scan in scans:
                started = time.perf_counter()
                function(scan)
                times.append((time.perf_counter() - started) * 1000.0)
        return round(statistics.median(times), 2)

    pixels = {id(scan): decode(scan, max_pixels=MAX_PIXELS).pixels for scan in scans}
    costs = {
        "pillow decode": median_ms(lambda scan: np.asarray(Image.open(io.BytesIO(scan)))),
        "service decode (fast PNG path: ISA-L + C unfilter)": median_ms(lambda scan: decode(scan, max_pixels=MAX_PIXELS)),
        "naive decode + preprocess (Pillow, float32 reshape-mean)": median_ms(naive_tensor),
        "service preprocess": median_ms(lambda scan: preprocess(pixels[id(scan)])),
        "service decode + preprocess": median_ms(lambda scan: prepare(scan, MAX_PIXELS)),
    }
    reference = naive_tensor(scans[0])
    costs["max |naive - service| on a scan"] = float(np.abs(reference - prepare(scans[0], MAX_PIXELS).tensor).max())
    log(f"(b) per scan: {costs}")
    return costs


def pipeline_ceiling(settings: Settings, scans: list[bytes], seconds: float, concurrency: int = 16) -> float:
    """(c) scans/s of the service's own pipeline (decode pool + micro-batcher + ORT), all cores, no HTTP."""
    model = load_model(settings.model_path, policy="cpu", intra_op_threads=settings.intra_op_threads or available_cpus())
    model.warm_up(list(range(1, settings.max_batch + 1)), 1)

    async def drive() -> float:
        batcher = MicroBatcher(
            model.predict, max_batch=settings.max_batch, max_delay_s=settings.max_delay_ms / 1000, max_queue=settings.max_queue
        )
        predictor = Predictor.from_settings(model, batcher, settings)
        batcher.start()
        done = 0
        deadline = time.perf_counter() + seconds

        async def client(offset: int) -> None:
            nonlocal done
            index = offset
            while time.perf_counter() < deadline:
                await predictor.predict(scans[index % len(scans)])
                index += concurrency
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        await batcher.stop()
        predictor.close()
        return done / elapsed

    scans_per_second = round(asyncio.run(drive()), 1)
    log(f"(c) ceiling {settings.model_path.name}: {scans_per_second} scans/s")
    return scans_per_second


def load_series(name: str, url: str, body: Body, concurrencies: list[int], seconds: float) -> list[dict[str, Any]]:
    """hey at each concurrency; also the client's own CPU use (cores), to show what it took from the server."""
    rows = []
    for concurrency in concurrencies:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = run_hey(url, body, concurrency=concurrency, seconds=seconds)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result.update(system=name, concurrency=concurrency, client_cores=round(cpu / (time.perf_counter() - started), 3))
        rows.append(result)
        log(f"(d) {name} c={concurrency}: {result}")
    return rows


def service_env(model: Path, variant: str, **extra: str) -> dict[str, str]:
    """The service's environment for one variant of the benchmark model.

    The variant file is served as a model of its own: a random-weight model has no AUROC, so its
    INT8 file carries no variant metadata, which `CXR_MODEL_VARIANT` rightly insists on.
    """
    return {"CXR_MODEL_PATH": str(variant_path(model, variant)), "CXR_EXECUTION_PROVIDER": "cpu", **extra}


def end_to_end(model: Path, scans: list[bytes], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """(d) + (e): every system under the same load, interleaved.

    All servers start first (idle, they use no CPU); then, for each concurrency, each system is
    loaded in turn. On a shared machine whose background load drifts, interleaving keeps the
    comparison between systems fair, where one system after another would not be.
    """
    multipart = multipart_body(scans[0], work / "multipart.bin")
    python = sys.executable
    systems: list[tuple[str, Server, str, Body, list[int]]] = []
    for port, variant in ((8101, "fp32"), (8102, "int8")):
        server = Server([python, "-m", "service"], service_env(model, variant, CXR_PORT=str(port)), f"http://127.0.0.1:{port}/ready")
        systems.append((f"service {variant}", server, f"http://127.0.0.1:{port}/predict", multipart, args.concurrency))
    env = service_env(model, "int8", CXR_PORT="8105", CXR_INTRA_OP_THREADS="1")
    server = Server([python, "-m", "service"], env, "http://127.0.0.1:8105/ready")
    systems.append(("service int8, 1 ORT thread", server, "http://127.0.0.1:8105/predict", multipart, args.concurrency))
    naive = Server([python, "-m", "uvicorn", "benchmarks.naive_service:app", "--port", "8103"], {"CXR_BENCH_MODEL": str(model)}, "http://127.0.0.1:8103/docs")
    systems.append(("naive FastAPI", naive, "http://127.0.0.1:8103/predict", multipart, args.concurrency))
    if args.triton_python and Path(args.triton_python).exists():
        libdir = subprocess.run(
            [args.triton_python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"], capture_output=True, text=True
        ).stdout.strip()
        env = {"LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
        triton = Server([args.triton_python, "benchmarks/triton_service.py", str(model), "--http-port", "8110"], env, "http://127.0.0.1:8110/v2/models/cxr/ready")
        body = triton_body(scans[0], work / "triton.bin")
        systems.append(("Triton (PyTriton)", triton, "http://127.0.0.1:8110/v2/models/cxr/infer", body, args.concurrency))
    else:
        log("Triton skipped: no --triton-python interpreter (see benchmarks/requirements.txt)")
    # what `make serve` runs: the shipped model, no settings (CXR_MODEL_VARIANT=auto serves its INT8 sibling on CPU)
    default = Server([python, "-m", "service"], {"CXR_PORT": "8106"}, "http://127.0.0.1:8106/ready")
    systems.append(("service default (make serve)", default, "http://127.0.0.1:8106/predict", multipart, args.concurrency))
    # (e) two worker processes with one ORT thread and one decode thread each: the service's own
    # `--workers 2` (model check, drain, aggregated metrics) and plain uvicorn workers
    env = service_env(model, "int8", CXR_INTRA_OP_THREADS="1", CXR_DECODE_THREADS="1")
    own = Server([python, "-m", "service", "--workers", "2"], {**env, "CXR_PORT": "8107"}, "http://127.0.0.1:8107/ready")
    systems.append(("service int8, --workers 2", own, "http://127.0.0.1:8107/predict", multipart, [16]))
    # the shared inference process: two frontends with one decode thread each, one process running the model (CPUs' threads)
    shared_env = service_env(model, "int8", CXR_DECODE_THREADS="1", CXR_PORT="8108")
    shared = Server([python, "-m", "service", "--workers", "2", "--inference", "shared"], shared_env, "http://127.0.0.1:8108/ready")
    systems.append(("service int8, --workers 2 --inference shared", shared, "http://127.0.0.1:8108/predict", multipart, [16]))
    workers = Server([python, "-m", "uvicorn", "--factory", "service.http.app:create_app", "--port", "8104", "--workers", "2"], env, "http://127.0.0.1:8104/ready")
    systems.append(("service int8, 2 uvicorn workers", workers, "http://127.0.0.1:8104/predict", multipart, [16]))

    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        for _, server, *_ in systems:
            stack.enter_context(server)
        for name, _, url, *_ in systems:  # /ready answers once one process is; measure when both are
            if "--workers 2" in name:
                every_process_ready(url.removesuffix("/predict"), 2)
        for concurrency in args.concurrency:
            for name, _, url, body, concurrencies in systems:
                if concurrency in concurrencies:
                    rows += load_series(name, url, body, [concurrency], args.seconds)
    return sorted(rows, key=lambda row: [name for name, *_ in systems].index(row["system"]))


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" (with uncommitted changes)" if dirty.strip() else ""),
        "cpu": cpu,
        "cpus": available_cpus(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with NIH PNGs (searched one level down)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--triton-python", default=str(REPO_ROOT.parent / "triton-venv" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="short runs and fewer sizes, to rehearse")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.concurrency = 2.0, [1, 16]

    facts = machine()
    log(f"machine: {facts}")
    scans = nih_scans(args.data, 40)
    fp32 = benchmark_model()
    int8 = int8_model(fp32, scans)
    seconds = 0.5 if args.quick else 3.0
    results: dict[str, Any] = {"machine": facts}
    results["raw"] = raw_inference({"fp32": fp32, "int8": int8}, [1, 8] if args.quick else [1, 2, 4, 8, 16, 32], seconds)
    results["per_scan"] = per_scan_costs(scans, 1 if args.quick else 3)
    results["ceiling"] = {
        variant: pipeline_ceiling(Settings(model_path=variant_path(fp32, variant), execution_provider="cpu"), scans, args.seconds)
        for variant in ("fp32", "int8")
    }
    with tempfile.TemporaryDirectory() as work:
        results["load"] = end_to_end(fp32, scans, args, Path(work))
    facts["load_after"] = [round(x, 2) for x in os.getloadavg()]

    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from benchmarks.report import write_report

    write_report(results, args.out, args.out.with_name("results.png"))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
