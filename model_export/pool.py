"""The labelled pool for cross-validation: every scan of several data roots, with all 14 NIH findings.

A root is NIH's release as downloaded (`Data_Entry_2017.csv` beside `images_0NN/images/*.png`), a
folder with `labels.csv` (`filename,label[,finding_labels][,patient_id]...`, files in
`<root>/<label>/<filename>`, the layout of ../shared/data) or plain class folders (`effusion/`,
`nofinding/`, optional `other/`). `label` is `effusion`, `nofinding` or `other` (another finding,
no effusion). NIH's own table (`Data_Entry_2017*.csv[.gz]`) adds the findings, view position, sex
and age of every NIH file name it lists.

Pixels go through the service's own decode and `preprocess` (`model_export.cache.scan_tensor`), so
training sees the numbers the service computes; scans are decoded once into the on-disk cache.
The pool's one extra step, named in its cache folder: NIH's 64 px copies (which the service would
refuse) are pixel-repeated to 256 px first.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np

from model_export.cache import Cached, ScanCache
from model_export.data import index_files, patient_id_for
from model_export.errors import DataError
from service.preprocessing import OUTPUT_SIZE

# NIH ChestX-ray14's findings, in the order of the multi-label head (Wang et al. 2017).
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
EFFUSION = FINDINGS.index("Effusion")
LABELS = ("nofinding", "effusion", "other")
NIH_TABLE = "Data_Entry_2017.csv"  # at the top of NIH's release, beside images_001/ ... images_012/
ArrayLike = Union[np.ndarray, Cached, "Downsampled"]  # scans indexable by rows: in memory or read from the cache


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
    """The labelled scans of one root (NIH's release, labels.csv or class folders), each with the file's width."""
    if (root / NIH_TABLE).is_file():
        nih = nih_table(root / NIH_TABLE)
        index = index_files(root)
        listed = [(name, row) for name, row in nih.items() if name in index]  # a partial download trains on what is there
        rows = [(index[name], label_for(row["Finding Labels"]), row["Finding Labels"], row["Patient ID"]) for name, row in listed]
    else:
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


def pool_tensors(scans: Sequence[Scan], cache_dir: Path, *, workers: int = 2, dtype: str = "float32") -> Cached:
    """The pool's 256 px tensors, in pool order, from the on-disk scan cache (new or changed files decoded first);
    NIH's 64 px copies are enlarged to 256 px first (`model_export.cache.enlarge_small`)."""
    return ScanCache(cache_dir, dtype=dtype, enlarge=True).tensors([Path(scan.path) for scan in scans], workers=workers)


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


@dataclass(frozen=True)
class Downsampled:
    """Scans area-averaged to `resolution` as they are read: the training view of the 256 px cache.

    Indexing reads and averages only the rows asked for, with the same numbers as `downsample`
    of the whole array, so memory does not grow with the pool.
    """

    source: ArrayLike  # [N, 1, 256, 256]
    resolution: int

    def __len__(self) -> int:
        return len(self.source)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), 1, self.resolution, self.resolution)

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        return downsample(np.asarray(self.source[key]), self.resolution)

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def take(self, indices: np.ndarray) -> Downsampled:
        """Some scans, still read lazily."""
        source = self.source.take(indices) if isinstance(self.source, (Cached, Downsampled)) else self.source[indices]
        return Downsampled(source, self.resolution)


def scan_rows(scans: Sequence[Scan]) -> list[dict[str, object]]:
    return [asdict(scan) for scan in scans]
