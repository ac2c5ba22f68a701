"""benchmarks/run.py's results -> RESULTS.md (tables, the issue's targets) and results.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(str(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def find(load: list[dict[str, Any]], system: str, concurrency: int) -> dict[str, Any] | None:
    return next((row for row in load if row["system"] == system and row["concurrency"] == concurrency), None)


def targets(results: dict[str, Any]) -> list[list[Any]]:
    """The issue's targets, each with the measured figure and whether it is met."""
    load = results["load"]
    rows: list[list[Any]] = []

    def check(name: str, value: float | None, goal: str, met: bool | None) -> None:
        figure = "n/a" if value is None else f"{value:.2f}"
        rows.append([name, figure, goal, "n/a" if met is None else ("yes" if met else "**no**")])

    decode = results["per_scan"]["service decode + preprocess"]
    check("decode + preprocess per 1024x1024 PNG, one core (ms)", decode, "<= 5", decode <= 5)
    raw = results["raw"]
    batch = max(raw["fp32"], key=lambda size: raw["fp32"][size])
    speedup = raw["int8"][batch] / raw["fp32"][batch]
    check(f"INT8 / FP32 raw inference throughput (batch {batch})", speedup, ">= 2", speedup >= 2)
    systems = (("service default (make serve)", "int8"), ("service int8, 1 ORT thread", "int8"), ("service int8", "int8"), ("service fp32", "fp32"))
    for system, variant in systems:
        service = find(load, system, 16)
        naive = find(load, "naive FastAPI", 16)
        triton = find(load, "Triton (PyTriton)", 16)
        if service is None:
            continue
        rps = service["ok_rps"]
        if naive:
            check(f"{system} / naive FastAPI at c=16", rps / naive["ok_rps"], ">= 2", rps >= 2 * naive["ok_rps"])
        if triton:
            check(f"{system} / Triton at c=16", rps / triton["ok_rps"], ">= 1.6", rps >= 1.6 * triton["ok_rps"])
        peers = [row["p99_ms"] for row in (naive, triton) if row and row.get("p99_ms") is not None]
        if peers and service.get("p99_ms") is not None:
            check(f"{system} p99 at c=16 (ms) vs best peer {min(peers):.0f}", service["p99_ms"], "no worse", service["p99_ms"] <= min(peers))
        ceiling = results["ceiling"][variant]
        check(f"{system} / in-process pipeline ceiling ({variant}) at c=16", rps / ceiling, ">= 0.85", rps >= 0.85 * ceiling)
        check(f"{system} errors at c=16", service["errors"], "0", service["errors"] == 0)
        lone = find(load, system, 1)
        if lone and lone.get("p50_ms") is not None:
            check(f"{system} p50 of a lone request (ms)", lone["p50_ms"], "<= 15", lone["p50_ms"] <= 15)
    one, two = find(load, "service int8", 16), find(load, "service int8, --workers 2", 16)
    if one and two:
        check("service int8: --workers 2 / one process at c=16", two["ok_rps"] / one["ok_rps"], "reported", None)
    shared = find(load, "service int8, --workers 2 --inference shared", 16)
    if one and shared:
        check("service int8: --workers 2 --inference shared / one process at c=16", shared["ok_rps"] / one["ok_rps"], "reported", None)
    return rows


def contention_note(facts: dict[str, Any]) -> list[str]:
    """A warning when other work kept the machine busy: absolute figures are then low and noisy."""
    busiest = max(facts["load_before"][0], facts.get("load_after", [0.0])[0])
    if busiest <= facts["cpus"]:
        return []
    return [
        "",
        f"**Contention: the load average reached {busiest:.1f} on {facts['cpus']} CPUs from other work during this run.** "
        "Absolute figures are well below what an idle machine gives, and drift between steps; (d) interleaves the "
        "systems at each concurrency, so compare systems within one concurrency, not across sections.",
    ]


def write_report(results: dict[str, Any], markdown: Path, plot: Path) -> None:
    facts = results["machine"]
    load = results["load"]
    sizes = sorted(results["raw"]["fp32"], key=int)
    sections = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks.run` (see docs/performance.md for method and discussion).",
        "",
        table(["machine", "value"], [[key, value] for key, value in facts.items()]),
        "",
        "Load average before and after is the whole machine's: other work on a shared machine shows there.",
        *contention_note(facts),
        "",
        "## Targets",
        "",
        table(["target", "measured", "goal", "met"], targets(results)),
        "",
        "## (a) Raw ONNX Runtime on ready tensors (images/s, all cores)",
        "",
        table(["batch", *sizes], [[name, *(by_size[size] for size in sizes)] for name, by_size in results["raw"].items()]),
        "",
        "## (b) Decode + preprocess per scan (one thread, median ms, real 1024x1024 NIH PNGs)",
        "",
        table(["step", "ms"], [[name, value] for name, value in results["per_scan"].items()]),
        "",
        "## (c) In-process pipeline ceiling (the service's decode pool + micro-batcher + ORT, no HTTP, 16 in flight)",
        "",
        table(["variant", "scans/s"], [[name, value] for name, value in results["ceiling"].items()]),
        "",
        "## (d) End to end under `hey` (multipart upload of one real scan; Triton: binary KServe request)",
        "",
        table(
            ["system", "concurrency", "requests/s (200)", "p50 ms", "p90 ms", "p99 ms", "errors", "hey's CPU (cores)"],
            [
                [row["system"], row["concurrency"], row["ok_rps"], row["p50_ms"], row["p90_ms"], row["p99_ms"], row["errors"], row["client_cores"]]
                for row in load
            ],
        ),
        "",
        "![throughput and p99 latency by concurrency](results.png)",
        "",
    ]
    markdown.write_text("\n".join(sections))

    figure = Figure(figsize=(11, 4.2))
    throughput, latency = figure.subplots(1, 2)
    for system in dict.fromkeys(row["system"] for row in load):
        rows = [row for row in load if row["system"] == system]
        if len(rows) < 2:
            continue
        throughput.plot([row["concurrency"] for row in rows], [row["ok_rps"] for row in rows], marker="o", label=system)
        measured = [row for row in rows if row["p99_ms"] is not None]
        latency.plot([row["concurrency"] for row in measured], [row["p99_ms"] for row in measured], marker="o", label=system)
    for axis, label in ((throughput, "requests/s"), (latency, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    latency.set_yscale("log")
    throughput.legend(fontsize=8)
    figure.suptitle(f"{facts['cpus']} CPUs, {facts['cpu']}, {facts['date']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(plot, dpi=110)
