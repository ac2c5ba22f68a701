"""The labelled pool for cross-validation: every scan of several data roots, with all 14 NIH findings.

A root is a folder with `labels.csv` (`filename,label[,finding_labels][,patient_id]...`, files in
`<root>/<label>/<filename>`, the layout of ../shared/data) or plain class folders (`effusion/`,
`nofinding/`, optional `other/`). `label` is `effusion`, `nofinding` or `other` (another finding,
no effusion). NIH's own table (`Data_Entry_2017*.csv[.gz]`) adds the findings, view position, sex
and age of every NIH file name it lists.

Pixels go through the service's own decode and `preprocess`, so training sees the numbers the
service computes. Scans smaller than the service accepts (the 64 px copies) are first enlarged by
exact pixel repetition to 256 px: after the network's 4x4 area pooling that is the original grid again.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model_export.data import patient_id_for
from model_export.errors import DataError
from service.decode import decode
from service.errors import ServiceError
from service.preprocessing import OUTPUT_SIZE, PREPROCESSING_ID, preprocess
from service.settings import DEFAULT_MAX_PIXELS

# NIH ChestX-ray14's findings, in the order of the multi-label head (Wang et al. 2017).
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
EFFUSION = FINDINGS.index("Effusion")
LABELS = ("nofinding", "effusion", "other")


@dataclass(frozen=True)
class Scan:
    """One labelled scan of the pool and the facts the subgroup analysis needs."""

    path: str
    label: str  # nofinding | effusion | other
    findings: str  # NIH "Finding Labels" ("A|B" or "No Finding"); "" when unknown
    patient_id: str
    width: int  # the file's own size: 1024 is native NIH, smaller ones are reduced copies
    view: str = ""  # PA | AP | ""
    sex: str = ""  # M | F | ""
    age: int = -1

    @property
    def effusion(self) -> int:
        return int(self.label == "effusion")

    def finding_targets(self) -> np.ndarray:
        """The 14-finding target vector; for unknown findings only effusion is known (the rest masked by NaN)."""
        if not self.findings:
            targets = np.full(len(FINDINGS), np.nan, dtype=np.float32)
            if self.label == "nofinding":
                targets[:] = 0.0
            targets[EFFUSION] = self.effusion
            return targets
        present = {name.strip() for name in self.findings.split("|")}
        return np.array([float(name in present) for name in FINDINGS], dtype=np.float32)


def nih_table(path: Path) -> dict[str, dict[str, str]]:
    """NIH's Data_Entry table keyed by file name ("Image Index"); .csv or .csv.gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
            return {row["Image Index"]: row for row in csv.DictReader(handle)}
    except (OSError, KeyError) as error:
        raise DataError(f"cannot read NIH table {path}: {error}") from error


def read_root(root: Path, nih: dict[str, dict[str, str]] | None = None) -> list[Scan]:
    """The labelled scans of one root (labels.csv or class folders), each with the file's width."""
    rows = labelled_files(root)
    scans = []
    for path, label, findings, patient in rows:
        entry = (nih or {}).get(path.name, {})
        findings = findings or entry.get("Finding Labels", "")
        if findings and label != label_for(findings):
            raise DataError(f"{path}: label {label!r} disagrees with its findings {findings!r}")
        scans.append(
            Scan(
                path=str(path),
                label=label,
                findings=findings,
                patient_id=patient or patient_id_for(path),
                width=image_width(path),
                view=entry.get("View Position", ""),
                sex=entry.get("Patient Gender", ""),
                age=int(entry["Patient Age"]) if entry.get("Patient Age", "").isdigit() else -1,
            )
        )
    return scans


def labelled_files(root: Path) -> list[tuple[Path, str, str, str]]:
    """(path, label, findings, patient_id) from `<root>/labels.csv`, else from the class folders."""
    listing = root / "labels.csv"
    if listing.is_file():
        with open(listing, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        if rows and not {"filename", "label"} <= rows[0].keys():
            raise DataError(f"{listing} needs the columns filename and label")
        found = []
        for row in rows:
            label = row["label"].strip().lower()
            if label not in LABELS:
                raise DataError(f"{listing}: label {row['label']!r} is none of {LABELS}")
            found.append((root / label / row["filename"], label, row.get("finding_labels", ""), row.get("patient_id", "")))
        return found
    folders = [label for label in LABELS if (root / label).is_dir()]
    if not folders:
        raise DataError(f"{root} has no labels.csv and none of the folders {', '.join(LABELS)}")
    return [
        (path, label, "", "")
        for label in folders
        for path in sorted((root / label).iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]


def label_for(findings: str) -> str:
    present = {name.strip() for name in findings.split("|")}
    if "Effusion" in present:
        return "effusion"
    return "nofinding" if present == {"No Finding"} else "other"


def image_width(path: Path) -> int:
    """The stored width, read from the header only (PNG IHDR or Pillow's lazy open)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.width)
    except OSError:
        return -1  # not a raster (DICOM) or unreadable: decoding will say which


def read_pool(roots: Sequence[Path], nih_labels: Path | None = None) -> list[Scan]:
    """Every scan of every root; a file name seen twice is refused (the pool must not count a scan twice)."""
    nih = nih_table(nih_labels) if nih_labels else None
    scans = [scan for root in roots for scan in read_root(root, nih)]
    names: dict[str, str] = {}
    for scan in scans:
        name = Path(scan.path).name
        if name in names:
            raise DataError(f"{name} appears twice: {names[name]} and {scan.path}")
        names[name] = scan.path
    if not any(scan.effusion for scan in scans) or all(scan.effusion for scan in scans):
        raise DataError("the pool needs effusion scans and scans without effusion")
    return scans


def scan_tensor(path: Path) -> np.ndarray:
    """The service's tensor [1, 256, 256] of one file; a smaller square scan is first pixel-repeated to 256."""
    decoded = decode(path.read_bytes(), max_pixels=DEFAULT_MAX_PIXELS)
    pixels = decoded.pixels
    side = min(pixels.shape)
    if side < OUTPUT_SIZE and OUTPUT_SIZE % side == 0 and pixels.shape[0] == pixels.shape[1]:
        factor = OUTPUT_SIZE // side
        pixels = np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)
    return preprocess(pixels)[0]


def read_scan(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(tensor, None), or (None, why the file cannot be used)."""
    try:
        return scan_tensor(path), None
    except ServiceError as error:
        return None, f"{error.code}: {error.message}"
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"


def pool_tensors(scans: Sequence[Scan], cache_dir: Path, *, workers: int = 2) -> np.ndarray:
    """float32 [N, 1, 256, 256] for the pool, memory-mapped from a cache keyed by preprocessing ID and file stats."""
    digest = hashlib.sha256(PREPROCESSING_ID.encode())
    for scan in scans:
        stat = os.stat(scan.path)
        digest.update(f"{Path(scan.path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    cache = cache_dir / f"pool-{digest.hexdigest()[:20]}.npy"
    if cache.exists():
        return np.load(cache, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.partial")
    tensors = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(len(scans), 1, OUTPUT_SIZE, OUTPUT_SIZE))
    failures = []

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(read_scan, (Path(scan.path) for scan in scans))
        for index, (tensor, problem) in enumerate(tqdm(results, total=len(scans), desc="decode", disable=None)):
            if problem is None:
                tensors[index] = tensor
            else:
                failures.append(f"  {scans[index].path}: {problem}")
    if failures:
        del tensors
        partial.unlink()
        raise DataError(f"{len(failures)} of {len(scans)} images cannot be used:\n" + "\n".join(failures))
    tensors.flush()
    del tensors
    partial.replace(cache)
    return np.load(cache, mmap_mode="r")


def downsample(tensors: np.ndarray, resolution: int) -> np.ndarray:
    """Area-average [N, 1, 256, 256] to [N, 1, r, r]: exactly what the exported graph does to its input."""
    factor = OUTPUT_SIZE // resolution
    if factor * resolution != OUTPUT_SIZE:
        raise DataError(f"resolution {resolution} does not divide {OUTPUT_SIZE}")
    n = len(tensors)
    out = np.empty((n, 1, resolution, resolution), dtype=np.float32)
    for start in range(0, n, 256):
        block = np.asarray(tensors[start : start + 256], dtype=np.float32)
        out[start : start + len(block)] = block.reshape(len(block), 1, resolution, factor, resolution, factor).mean(axis=(3, 5))
    return out


def scan_rows(scans: Sequence[Scan]) -> list[dict[str, object]]:
    return [asdict(scan) for scan in scans]
