"""The GPU path, checked on a CUDA host in one run: provider, cuDNN search, batch sizes, IO binding, FP16, service.

Run on a machine with onnxruntime-gpu (see docs/performance.md for how it was run on a lent H100):

    python -m benchmarks.gpu_check --out results/gpu --images /path/to/pngs

Writes `gpu.json` (every figure) and prints a summary. `--provider cpu --quick` rehearses the
same code on a CPU-only machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.loadgen import Body, run_hey
from benchmarks.resnet18 import benchmark_model
from benchmarks.run import Server
from service.model import CPU, CUDA, INPUT_NAME, OUTPUT_NAME, load_model, session_options
from service.prepare import prepare
from service.settings import variant_path

MAX_PIXELS = 25_000_000
SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def log(message: str) -> None:
    print(message, flush=True)


def session(path: Path, provider: str, search: str = "EXHAUSTIVE") -> ort.InferenceSession:
    providers: list[Any] = [(CUDA, {"cudnn_conv_algo_search": search}), CPU] if provider == "cuda" else [CPU]
    return ort.InferenceSession(str(path), sess_options=session_options(os.cpu_count() or 1), providers=providers)


def timed(function: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def cudnn_search(path: Path, provider: str, sizes: list[int], repeats: int) -> dict[str, Any]:
    """First-run and steady latency per batch size for each cudnn_conv_algo_search value."""
    results: dict[str, Any] = {}
    for search in SEARCHES if provider == "cuda" else ("n/a",):
        sess = session(path, provider, search)
        rows = {}
        for size in sizes:
            batch = np.random.default_rng(size).random((size, 1, 256, 256), dtype=np.float32)
            first = timed(lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: batch}), 1)[0]
            steady = statistics.median(timed(lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: batch}), repeats))
            rows[size] = {"first_ms": round(first, 2), "steady_ms": round(steady, 3)}
        results[search] = rows
        log(f"cudnn_conv_algo_search={search}: {rows}")
    return results


def throughput(path: Path, provider: str, sizes: list[int], seconds: float) -> dict[str, Any]:
    """Images/s per batch size: host arrays, IO binding (host input, device output), device-resident input."""
    sess = session(path, provider)
    device = "cuda" if provider == "cuda" else "cpu"
    results: dict[str, Any] = {}
    for size in sizes:
        batch = np.random.default_rng(size).random((size, 1, 256, 256), dtype=np.float32)
        row = {"host": rate(lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: batch}), size, seconds)}
        if provider == "cuda":
            binding = sess.io_binding()
            binding.bind_cpu_input(INPUT_NAME, batch)
            binding.bind_output(OUTPUT_NAME, device)

            def bound() -> None:
                binding.bind_cpu_input(INPUT_NAME, batch)
                sess.run_with_iobinding(binding)
                binding.copy_outputs_to_cpu()

            row["io_binding"] = rate(bound, size, seconds)
            resident = ort.OrtValue.ortvalue_from_numpy(batch, device, 0)
            on_device = sess.io_binding()
            on_device.bind_ortvalue_input(INPUT_NAME, resident)
            on_device.bind_output(OUTPUT_NAME, device)
            row["device_input"] = rate(lambda: sess.run_with_iobinding(on_device), size, seconds)
        results[size] = row
        log(f"batch {size}: {row}")
    return results


def rate(function: Any, size: int, seconds: float) -> float:
    for _ in range(3):
        function()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        function()
        count += 1
    return round(count * size / (time.perf_counter() - started), 1)


def decode_scaling(images: list[bytes], workers: list[int], seconds: float) -> dict[str, Any]:
    """Scans/s of decode + preprocess with N threads vs N spawned processes."""
    results: dict[str, Any] = {}
    for kind, pool_type in (("threads", ThreadPoolExecutor), ("processes", ProcessPoolExecutor)):
        for count in workers:
            with pool_type(max_workers=count) as pool:
                list(pool.map(prepare, images[:count], [MAX_PIXELS] * count))  # start workers
                done, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds:
                    list(pool.map(prepare, images, [MAX_PIXELS] * len(images)))
                    done += len(images)
                results[f"{kind}_{count}"] = round(done / (time.perf_counter() - started), 1)
            log(f"decode+preprocess {kind} x{count}: {results[f'{kind}_{count}']} scans/s")
    return results


def service_runs(model: Path, image: Path, provider: str, configs: list[dict[str, str]], seconds: int) -> list[dict[str, Any]]:
    """Start `python -m service` per configuration and load it with hey at concurrency 64."""
    results = []
    for number, config in enumerate(configs):
        port = 8100 + number
        env = {"CXR_MODEL_PATH": str(model), "CXR_EXECUTION_PROVIDER": provider, "CXR_PORT": str(port), **config}
        row: dict[str, Any] = {"config": config}
        try:
            with Server([sys.executable, "-m", "service"], env, f"http://127.0.0.1:{port}/ready"):
                body = Body(image, "image/png")  # the service takes a raw PNG body as well as multipart
                row.update(run_hey(f"http://127.0.0.1:{port}/predict", body, concurrency=64, seconds=seconds))
        except RuntimeError as error:  # not ready: keep the server's log tail in the report
            row["error"] = str(error)
        results.append(row)
        log(f"service {config}: {row}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of real PNG scans")
    parser.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--no-service", action="store_true", help="skip the end-to-end service run (needs hey on PATH)")
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (rehearsal)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    report: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "onnxruntime": ort.__version__,
                              "providers": ort.get_available_providers(), "python": platform.python_version()}
    log(json.dumps(report))
    if args.provider == "cuda":
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, before any session
        report["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                              capture_output=True, text=True).stdout.strip()

    from model_export.variants import convert_fp16

    fp32 = benchmark_model()
    fp16 = convert_fp16(fp32, variant_path(fp32, "fp16"))
    model = load_model(fp32, policy=args.provider)
    report["active_provider"] = model.execution_provider
    report["provider_problem"] = model.provider_problem(args.provider)
    log(f"load_model(policy={args.provider!r}) -> {model.execution_provider}; problem: {report['provider_problem']}")
    del model

    sizes = [1, 8, 32] if quick else [1, 8, 32, 64]
    report["cudnn_search"] = cudnn_search(fp32, args.provider, sizes, 5 if quick else 30)
    tp_sizes = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 64]
    seconds = 0.5 if quick else 1.5
    report["throughput_fp32"] = throughput(fp32, args.provider, tp_sizes, seconds)
    report["throughput_fp16"] = throughput(fp16, args.provider, tp_sizes, seconds)

    images = [path.read_bytes() for path in sorted(args.images.glob("*.png"))]
    cpus = os.cpu_count() or 1
    workers = sorted({1, max(1, cpus // 2), cpus})
    report["decode_scaling"] = decode_scaling(images, workers, 1.0 if quick else 3.0)

    if not args.no_service:
        scan = sorted(args.images.glob("*.png"))[0]
        decoders = max(1, cpus - 2)
        configs = [
            {"CXR_MAX_BATCH": "32", "CXR_MAX_QUEUE": "256"},
            {"CXR_MAX_BATCH": "32", "CXR_MAX_QUEUE": "256", "CXR_DECODE_PROCESSES": str(decoders)},
        ]
        if args.provider == "cuda":
            configs.append({"CXR_MAX_BATCH": "32", "CXR_MAX_QUEUE": "256", "CXR_DECODE_PROCESSES": str(decoders), "CXR_MODEL_VARIANT": "fp16"})
        report["service"] = service_runs(fp32, scan, args.provider, configs, 3 if quick else 10)

    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out / 'gpu.json'}")


if __name__ == "__main__":
    main()
