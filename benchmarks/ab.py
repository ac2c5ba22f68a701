"""Two checkouts of the service, measured against each other on the same machine at the same time.

A refactor must not slow the service down. Absolute figures on a shared 2-core machine drift with
whatever else runs, so this benchmark never compares a run with an older one: it alternates the
two checkouts round by round (before, after, before, after, ...) for the three figures that matter
and reports each checkout's median and their ratio:

- decode + preprocess of one real 1024x1024 NIH PNG, one thread (ms, lower is better);
- the in-process ceiling: decode pool + micro-batcher + ONNX Runtime, no HTTP (scans/s);
- end to end: `python -m service` loaded by `hey` at concurrency 16 (requests/s, and p99).

Each checkout runs with its own interpreter (`--before-python`, `--after-python`: a virtualenv with
that checkout installed, so its C extension is its own) and imports its own `benchmarks.run`, whose
`per_scan_costs` and `pipeline_ceiling` both layouts have. Both serve the same benchmark model.

    python -m benchmarks.ab --before ../cxr-before --before-python ../cxr-before/.venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_DATA, REPO_ROOT, Server, log, nih_scans
from benchmarks.loadgen import multipart_body, run_hey
from benchmarks.resnet18 import benchmark_model

# Run inside each checkout; prints one JSON line. Imports only what both layouts have.
IN_PROCESS = """
import json, sys
from pathlib import Path
from benchmarks.run import per_scan_costs, pipeline_ceiling
from service.settings import Settings
try:
    from benchmarks.common import nih_scans
except ImportError:
    from benchmarks.run import nih_scans
data, seconds = Path(sys.argv[1]), float(sys.argv[2])
scans = nih_scans(data, 40)
costs = per_scan_costs(scans, 3)
ceiling = pipeline_ceiling(Settings(), scans, seconds)
print(json.dumps({"decode_preprocess_ms": costs["service decode + preprocess"], "ceiling_scans_per_s": ceiling}))
"""

PORTS = {"before": 8301, "after": 8302}


def in_process(checkout: Path, python: str, env: dict[str, str], data: Path, seconds: float) -> dict[str, float]:
    """One round of the in-process figures, measured by the checkout's own code."""
    done = subprocess.run(
        [python, "-c", IN_PROCESS, str(data), str(seconds)], cwd=checkout, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(values: list[float | None]) -> float | None:
    """The median of the rounds that produced the figure (hey gives no percentiles for very few requests)."""
    measured = [value for value in values if value is not None]
    return round(statistics.median(measured), 2) if measured else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (e.g. a git worktree of the older commit)")
    parser.add_argument("--before-python", required=True, help="an interpreter with --before installed")
    parser.add_argument("--after", type=Path, default=REPO_ROOT, help="this checkout by default")
    parser.add_argument("--after-python", default=sys.executable)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with NIH PNGs (searched one level down)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations; medians are reported")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each ceiling and load run")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    model = benchmark_model()
    env = {**os.environ, "CXR_MODEL_PATH": str(model), "CXR_EXECUTION_PROVIDER": "cpu"}
    sides = {"before": (args.before.resolve(), args.before_python), "after": (args.after.resolve(), args.after_python)}
    results: dict[str, dict[str, list[float]]] = {side: {} for side in sides}

    def record(side: str, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            results[side].setdefault(key, []).append(value)
        log(f"{side}: {figures}")

    for _ in range(args.rounds):
        for side, (checkout, python) in sides.items():
            record(side, in_process(checkout, python, env, args.data, args.seconds))

    scan = nih_scans(args.data, 1)[0]
    body = multipart_body(scan, REPO_ROOT / "benchmarks" / ".cache" / "ab-multipart.bin")
    servers = {
        side: Server([python, "-m", "service"], {**env, "CXR_PORT": str(PORTS[side])}, f"http://127.0.0.1:{PORTS[side]}/ready", cwd=checkout)
        for side, (checkout, python) in sides.items()
    }
    with servers["before"], servers["after"]:
        for _ in range(args.rounds):
            for side in sides:
                hey = run_hey(f"http://127.0.0.1:{PORTS[side]}/predict", body, concurrency=16, seconds=args.seconds)
                record(side, {"c16_requests_per_s": hey["ok_rps"], "c16_p99_ms": hey["p99_ms"], "c16_errors": hey["errors"]})

    table = {side: {key: summary(values) for key, values in figures.items()} for side, figures in results.items()}
    ratios = {key: round(table["after"][key] / table["before"][key], 3) for key in table["after"] if table["before"].get(key)}
    report: dict[str, Any] = {"medians": table, "after_over_before": ratios, "rounds": args.rounds, "seconds": args.seconds}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps({**report, "all": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
