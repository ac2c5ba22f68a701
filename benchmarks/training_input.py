"""Training's input side: scan-cache build rate, stored-dtype error, and the images/s the training loop is fed.

    python -m benchmarks.training_input --data ../shared/data/nih-train --data ../shared/data/nih-extra
    python -m model_export synth /tmp/synth5k --count 2500 --size 256
    python -m benchmarks.training_input --data /tmp/synth5k --fit

Builds a fresh cache (in a temporary folder) with 1 and 2 worker processes, asks again (nothing
new: the incremental check alone), compares float16 and uint8 caches with float32, then times the
loop's input (read + area-average to 64 px + the default recipe's augmentations, no network) with
0 and 2 DataLoader workers. `--fit` also trains one epoch of the default recipe on the scans and
reports its images/s and the process's peak memory. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model_export.cache import ScanCache
from model_export.fit import Batches, augmenter, fit, global_batches
from model_export.pool import Downsampled, read_pool
from model_export.recipes import DEFAULT_RECIPE, resolve


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def input_rate(images: Downsampled, *, batch_size: int, workers: int, limit: int) -> float:
    """Images/s of the training loop's input: DataLoader read + downsample, then the recipe's augmentations."""
    augment = augmenter(resolve(DEFAULT_RECIPE))
    order = np.random.default_rng(0).permutation(len(images))[:limit]
    batches = global_batches(order, batch_size)
    targets = np.zeros((len(images), 1), dtype=np.float32)
    loader = torch.utils.data.DataLoader(
        Batches(images, targets), batch_size=None, sampler=batches, num_workers=workers, generator=torch.Generator()
    )
    started = time.perf_counter()
    count = 0
    for x, _ in loader:
        torch.stack([augment(image) for image in x])
        count += len(x)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, action="append", required=True, help="pool roots (labels.csv, class folders or NIH's release)"
    )
    parser.add_argument("--input-images", type=int, default=2048, help="images timed for the input rate")
    parser.add_argument("--fit", action="store_true", help="also train one epoch of the default recipe")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scans = read_pool(args.data)
    paths = [Path(scan.path) for scan in scans]
    rows: list[tuple[str, str]] = [
        ("machine", f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs"),
        ("load average before", " ".join(f"{value:.1f}" for value in os.getloadavg())),
        ("scans", f"{len(paths)} ({scans[0].width} px wide: {Path(scans[0].path).name})"),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for workers in (1, 2):
            cache = ScanCache(Path(folder) / f"w{workers}")
            started = time.perf_counter()
            cache.tensors(paths, workers=workers, progress=False)
            rows.append(
                (f"cache build, {workers} worker process(es)", f"{len(paths) / (time.perf_counter() - started):.0f} scans/s")
            )
        started = time.perf_counter()
        exact = cache.tensors(paths, progress=False)
        rows.append(("cache reuse (stat every file, nothing new)", f"{len(paths) / (time.perf_counter() - started):.0f} scans/s"))
        sample = np.sort(np.random.default_rng(0).permutation(len(paths))[:500])
        truth = exact[sample]
        for dtype in ("float16", "uint8"):
            stored = ScanCache(Path(folder) / dtype, dtype=dtype).tensors(paths, workers=2, progress=False)[sample]
            error = np.abs(stored - truth)
            small = np.abs(Downsampled(stored, 64)[:] - Downsampled(truth, 64)[:])
            disk = sum(chunk.stat().st_size for chunk in (Path(folder) / dtype).rglob("chunk-*.npy")) / len(paths) / 1024
            rows.append(
                (f"{dtype} cache vs float32 ({len(sample)} scans)",
                 f"max {error.max():.2e}, mean {error.mean():.2e} at 256 px; max {small.max():.2e} at 64 px; {disk:.0f} KiB/scan")
            )  # fmt: skip
        images = Downsampled(exact, 64)
        for workers in (0, 2):
            rate = input_rate(images, batch_size=64, workers=workers, limit=args.input_images)
            rows.append((f"training input (read, 64 px, augment), {workers} DataLoader workers", f"{rate:.0f} images/s"))
        if args.fit:
            recipe = resolve(DEFAULT_RECIPE, ["epochs=1"])
            targets = np.stack([scan.finding_targets() for scan in scans])
            started = time.perf_counter()
            fit(recipe, images, targets, seed=0, workers=2)
            seconds = time.perf_counter() - started
            rows.append(
                (
                    "fit, 1 epoch of the default recipe (1 torch thread)",
                    f"{len(paths) / seconds:.0f} images/s ({seconds / 60:.1f} min)",
                )
            )
        rows.append(("peak memory of this process", f"{peak_rss_mib():.0f} MiB"))
        rows.append(("load average after", " ".join(f"{value:.1f}" for value in os.getloadavg())))
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
