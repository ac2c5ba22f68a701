"""The GPU path, checked on a CUDA host in one run: provider, cuDNN search, batch sizes, IO binding, FP16, service.

Run on a machine with onnxruntime-gpu (see docs/performance.md for how it was run on a lent H100):

    python -m benchmarks.gpu_check --out results/gpu --images /path/to/pngs

Writes `gpu.json` (every figure) and prints a summary. `--sections decode,modes` measures what
issue #18 asks for: the host's decode ceiling and the serving modes at concurrency 64. `--provider cpu --quick` rehearses the
same code on a CPU-only machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from benchmarks.common import MAX_PIXELS, Server
from benchmarks.loadgen import Body, run_hey
from benchmarks.resnet18 import benchmark_model
from service.decode import png
from service.decode.png import decode_fast
from service.logs import log_config
from service.model import CPU, CUDA, INPUT_NAME, OUTPUT_NAME, load_model, session_options
from service.prepare import prepare
from service.settings import variant_path
from service.shared_inference import SLOT_BYTES
from testkit.live_server import every_process_ready

SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
SECTIONS = ("cudnn", "throughput", "shapes", "placement", "decode", "service", "modes")


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


def per_scan(images: list[bytes], repeats: int) -> dict[str, float]:
    """Median ms per scan on one thread of this host's CPU: Pillow, the service's fast PNG path, and decode + preprocess."""

    def median_ms(function: Any) -> float:
        return round(statistics.median(t for image in images for t in timed(lambda: function(image), repeats)), 2)

    results = {
        "pillow_decode": median_ms(lambda image: np.asarray(Image.open(io.BytesIO(image)))),
        "fast_png_decode": median_ms(lambda image: decode_fast(image, max_pixels=MAX_PIXELS)),
        "decode_preprocess": median_ms(lambda image: prepare(image, MAX_PIXELS)),
        "fast_path_built": png.available(),
    }
    log(f"per scan, one thread: {results}")
    return results


def placement(models: dict[str, Path], provider: str, size: int, repeats: int) -> dict[str, Any]:
    """Where each variant's nodes run and what they cost (ONNX Runtime's profiler), and the cost of fetching the heatmap.

    Asks why the FP16 variant served fewer requests than FP32 although its raw throughput is higher.
    """
    results: dict[str, Any] = {}
    batch = np.random.default_rng(size).random((size, 1, 256, 256), dtype=np.float32)
    for name, path in models.items():
        options = session_options(os.cpu_count() or 1)
        options.enable_profiling = True
        options.profile_file_prefix = f"/tmp/cxr-profile-{name}"
        providers: list[Any] = [(CUDA, {"cudnn_conv_algo_search": "EXHAUSTIVE"}), CPU] if provider == "cuda" else [CPU]
        sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        outputs = [output.name for output in sess.get_outputs()]
        for _ in range(3):
            sess.run(outputs, {INPUT_NAME: batch})
        row: dict[str, Any] = {
            "probability_only_ms": round(statistics.median(timed(lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: batch}), repeats)), 3),
            "all_outputs_ms": round(statistics.median(timed(lambda: sess.run(outputs, {INPUT_NAME: batch}), repeats)), 3),
            "outputs": outputs,  # with the shipped graph: the probability and the heatmap
        }
        events = json.loads(Path(sess.end_profiling()).read_text())
        by_provider: dict[str, dict[str, float]] = {}
        for event in events:
            args = event.get("args", {})
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and "provider" in args:
                entry = by_provider.setdefault(args["provider"], {"kernel_ms": 0.0, "ops": set()})
                entry["kernel_ms"] += event["dur"] / 1000.0
                entry["ops"].add(args.get("op_name", "?"))
        row["kernels"] = {key: {"ms": round(value["kernel_ms"], 2), "ops": sorted(value["ops"])} for key, value in by_provider.items()}
        results[name] = row
        log(f"placement {name} batch {size}: {row}")
    return results


def every_batch_size(models: dict[str, Path], provider: str, largest: int, repeats: int) -> dict[str, Any]:
    """Steady latency (ms) at every batch size 1..largest after one warm-up run each, as the service warms up.

    A size that stays slow after its warm-up run is paying cuDNN's algorithm search (or a
    fallback) on every call: the suspect for a variant that is slower end to end than raw.
    """
    results: dict[str, Any] = {}
    for name, path in models.items():
        sess = session(path, provider)
        sizes = range(1, largest + 1)
        batches = {size: np.random.default_rng(size).random((size, 1, 256, 256), dtype=np.float32) for size in sizes}
        first = {size: round(timed(lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: batches[size]}), 1)[0], 2) for size in sizes}
        steady = {
            size: round(statistics.median(timed(lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: batches[size]}), repeats)), 3)
            for size in sizes
        }
        results[name] = {"first_ms": first, "steady_ms": steady}
        log(f"every batch size {name}: steady {steady}")
    return results


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


def all_ready(server: Server, workers: int, timeout: float = 180.0) -> None:
    """Wait for every uvicorn worker's "ready:" log line: each warms up on its own, and probing /ready
    is not enough, since the kernel may hand every probe connection to the same worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.log.seek(0)
        if server.log.read().count(b"ready: model") >= workers:
            return
        time.sleep(0.5)
    raise RuntimeError(f"fewer than {workers} workers became ready within {timeout}s")


@contextmanager
def gpu_utilisation(report: dict[str, Any]) -> Iterator[None]:
    """Sample the GPU's utilisation (%) every 250 ms while the block runs; its mean and peak go into `report`."""
    if shutil.which("nvidia-smi") is None:
        yield
        return
    with tempfile.TemporaryFile() as samples:
        sampler = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "250"], stdout=samples
        )
        try:
            yield
        finally:
            sampler.terminate()
            sampler.wait(10)
            samples.seek(0)
            values = [float(line) for line in samples.read().decode().split() if line.replace(".", "", 1).isdigit()]
            if values:
                report["gpu_util_mean_pct"] = round(statistics.fmean(values), 1)
                report["gpu_util_max_pct"] = max(values)


def service_runs(model: Path, image: Path, provider: str, configs: list[dict[str, str]], seconds: int) -> list[dict[str, Any]]:
    """Start the service per configuration and load it with hey at concurrency 64, sampling the GPU's utilisation.

    `workers` in a configuration: that many uvicorn processes (`uvicorn --workers`); `CXR_WORKERS`
    (with or without `CXR_INFERENCE=shared`): `python -m service`'s own processes, waited for until
    every one reports ready (`cxr_ready` adds them up)."""
    results = []
    for number, config in enumerate(configs):
        port = 8100 + number
        env = {"CXR_MODEL_PATH": str(model), "CXR_EXECUTION_PROVIDER": provider, "CXR_PORT": str(port), **config}
        env.pop("workers", None)
        command = [sys.executable, "-m", "service"]
        if "workers" in config:
            # the service's own log configuration, so each worker's "ready:" line reaches the log
            log_file = Path(tempfile.gettempdir()) / "cxr-gpu-check-logging.json"
            log_file.write_text(json.dumps(log_config("info", "text"), default=lambda cls: f"{cls.__module__}.{cls.__qualname__}"))
            command = [sys.executable, "-m", "uvicorn", "--factory", "service.http.app:create_app", "--port", str(port),
                       "--workers", config["workers"], "--no-access-log", "--log-config", str(log_file)]
        row: dict[str, Any] = {"config": config}
        try:
            with Server(command, env, f"http://127.0.0.1:{port}/ready") as server:
                if "CXR_WORKERS" in config:
                    every_process_ready(f"http://127.0.0.1:{port}", int(config["CXR_WORKERS"]))
                else:
                    all_ready(server, int(config.get("workers", "1")))
                body = Body(image, "image/png")  # the service takes a raw PNG body as well as multipart
                with gpu_utilisation(row):
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
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
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

    if "cudnn" in sections:
        sizes = [1, 8, 32] if quick else [1, 8, 32, 64]
        report["cudnn_search"] = cudnn_search(fp32, args.provider, sizes, 5 if quick else 30)
    if "throughput" in sections:
        tp_sizes = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 64]
        seconds = 0.5 if quick else 1.5
        report["throughput_fp32"] = throughput(fp32, args.provider, tp_sizes, seconds)
        report["throughput_fp16"] = throughput(fp16, args.provider, tp_sizes, seconds)
    if "shapes" in sections:
        report["every_batch_size"] = every_batch_size({"fp32": fp32, "fp16": fp16}, args.provider, 8 if quick else 32, 3 if quick else 7)
    if "placement" in sections:
        report["placement"] = placement({"fp32": fp32, "fp16": fp16}, args.provider, 32, 5 if quick else 30)

    images = [path.read_bytes() for path in sorted(args.images.glob("*.png"))]
    cpus = os.cpu_count() or 1
    if "decode" in sections:
        report["per_scan"] = per_scan(images, 2 if quick else 5)
        workers = sorted({1, max(1, cpus // 2), cpus})
        report["decode_scaling"] = decode_scaling(images, workers, 1.0 if quick else 3.0)

    if "service" in sections and not args.no_service:
        scan = sorted(args.images.glob("*.png"))[0]
        decoders = max(1, cpus - 2)
        base = {"CXR_MAX_BATCH": "32", "CXR_MAX_QUEUE": "256"}
        configs = [
            base,  # one process, decode threads = all cores
            {**base, "CXR_DECODE_THREADS": str(max(1, cpus // 4))},  # fewer threads: less contention for the GIL
            {**base, "CXR_DECODE_PROCESSES": str(decoders)},
            {**base, "workers": "4", "CXR_DECODE_THREADS": str(max(1, cpus // 4))},
            {**base, "workers": "8", "CXR_DECODE_THREADS": str(max(1, cpus // 8))},
        ]
        if args.provider == "cuda":
            # served as a model of its own: the benchmark's FP16 file has no variant metadata (no AUROC to report)
            configs.append({**base, "workers": "4", "CXR_DECODE_THREADS": str(max(1, cpus // 4)), "CXR_MODEL_PATH": str(fp16)})
        report["service"] = service_runs(fp32, scan, args.provider, configs, 3 if quick else 10)

    if "modes" in sections and not args.no_service:
        # issue #18's rows: one process, 8 plain workers, the shared inference process with 4, 8 and 14 frontends
        # (requests/s and p99 at concurrency 64, GPU utilisation); decode threads share the cores among the processes
        scan = sorted(args.images.glob("*.png"))[0]
        base = {"CXR_MAX_BATCH": "32", "CXR_MAX_QUEUE": "256"}
        if quick:  # a CPU rehearsal: warming 32 batch sizes of FP32 ResNet18 on a small CPU outlasts the start-up limit
            base = {"CXR_MAX_BATCH": "4", "CXR_MAX_QUEUE": "32", "CXR_WARMUP_RUNS": "1"}
        # Each frontend's tensor block holds CXR_MAX_QUEUE + CXR_MAX_BATCH slots of 256 KB in /dev/shm, which a
        # container may keep small (64 MiB): the shared rows take the largest queue that fits, never under the
        # concurrency of 64 (the host's one queue then still holds every waiting request), and record it.
        report["dev_shm_free_mib"] = round(shutil.disk_usage("/dev/shm").free / 2**20)

        def shared(n: int) -> dict[str, str]:
            fits = shutil.disk_usage("/dev/shm").free // (n * SLOT_BYTES) - int(base["CXR_MAX_BATCH"]) - 1
            queue = max(64, min(int(base["CXR_MAX_QUEUE"]), fits))
            return {**base, "CXR_MAX_QUEUE": str(queue), "CXR_WORKERS": str(n), "CXR_INFERENCE": "shared",
                    "CXR_DECODE_THREADS": str(max(1, cpus // n))}  # fmt: skip

        configs = [
            {**base, "CXR_DECODE_THREADS": "4"},  # one process's best measured setting
            {**base, "CXR_WORKERS": "8", "CXR_DECODE_THREADS": str(max(1, cpus // 8))},
            *(shared(n) for n in (4, 8, 14)),
        ]
        report["modes"] = service_runs(fp32, scan, args.provider, configs, 3 if quick else 15)

    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out / 'gpu.json'}")


if __name__ == "__main__":
    main()
