"""One process, plain workers, and the shared inference process, under the same load, interleaved.

    python -m benchmarks.modes                               # FP32, concurrency 16 and 64, 10 s each, 2 processes
    python -m benchmarks.modes --workers 2 --concurrency 16 64 --seconds 10 --out benchmarks/modes.json

Every system is `python -m service` on the random-weight ResNet18 of the shipped graph
(benchmarks/resnet18.py), loaded by `hey` with one multipart NIH scan:
- one process (its defaults: decode threads and ONNX Runtime threads = the CPUs);
- `--workers N`: N whole services, each with CPUs/N decode and ONNX Runtime threads (the rule of
  docs/performance.md);
- `--workers N --inference shared`: N frontends with CPUs/N decode threads each, and one
  inference process with the CPUs' ONNX Runtime threads.
All start first (idle, they use no CPU) and wait until every one of their processes is ready
(`cxr_ready` adds the processes up); then, at each concurrency, each is loaded in turn, so a
drift in the machine's background load touches all of them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_DATA, Server, log, nih_scans
from benchmarks.loadgen import multipart_body, run_hey
from benchmarks.resnet18 import benchmark_model
from service.resources import available_cpus
from testkit.live_server import every_process_ready


def systems(model: Path, workers: int) -> list[tuple[str, Server, int, str]]:
    """(name, server, processes that must report ready, predict URL) per serving mode."""
    share = str(max(1, available_cpus() // workers))
    base = {"CXR_MODEL_PATH": str(model), "CXR_EXECUTION_PROVIDER": "cpu", "CXR_MAX_BATCH": "8", "CXR_LOG_LEVEL": "warning"}
    modes = [
        ("one process", {}, 1),
        (f"{workers} plain workers", {"CXR_WORKERS": str(workers), "CXR_DECODE_THREADS": share, "CXR_INTRA_OP_THREADS": share}, workers),
        (f"shared inference, {workers} frontends", {"CXR_WORKERS": str(workers), "CXR_INFERENCE": "shared", "CXR_DECODE_THREADS": share}, workers),
    ]
    rows = []
    for number, (name, env, processes) in enumerate(modes):
        port = 8120 + number
        server = Server([sys.executable, "-m", "service"], {**base, **env, "CXR_PORT": str(port)}, f"http://127.0.0.1:{port}/ready")
        rows.append((name, server, processes, f"http://127.0.0.1:{port}"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with NIH PNGs (searched one level down)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the plain and the shared mode")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    model = benchmark_model()
    scan = nih_scans(args.data, 1)[0]
    report: dict[str, Any] = {"cpus": available_cpus(), "load_before": [round(x, 2) for x in os.getloadavg()], "rows": []}
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        body = multipart_body(scan, Path(work) / "multipart.bin")
        started = systems(model, args.workers)
        for name, server, processes, url in started:
            stack.enter_context(server)
            every_process_ready(url, processes)
            log(f"{name}: ready")
        for concurrency in args.concurrency:
            for name, _, _, url in started:
                row = {"system": name, "concurrency": concurrency, **run_hey(f"{url}/predict", body, concurrency=concurrency, seconds=args.seconds)}
                report["rows"].append(row)
                log(json.dumps(row))
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print("| system | concurrency | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for row in report["rows"]:
        print(f"| {row['system']} | {row['concurrency']} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} |")
    print(f"\nCPUs {report['cpus']}; load average before {report['load_before']}, after {report['load_after']}")
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
