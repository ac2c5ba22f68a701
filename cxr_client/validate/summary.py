"""What the validation data is: formats, sizes, modes, duplicates, and overlap with the model's training patients.

A site learns here whether its scans look like what the model was built for, and whether a
good result could be flattered by scans the model has already seen.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FileFacts:
    """The facts one file contributes to the summary (None where it did not decode)."""

    file: str
    format: str | None
    width: int | None
    height: int | None
    mode: str | None
    pixel_sha256: str | None
    patient_id: str | None


def counts(values: Iterable[str | None]) -> dict[str, int]:
    """Value -> count, most frequent first; files that did not decode count as 'not decoded'."""
    tally = Counter(value if value is not None else "not decoded" for value in values)
    return dict(sorted(tally.items(), key=lambda item: (-item[1], item[0])))


def duplicate_groups(files: list[FileFacts]) -> list[list[str]]:
    """Files whose decoded pixels are identical, whatever their format: one scan counted twice."""
    by_hash: dict[str, list[str]] = defaultdict(list)
    for facts in files:
        if facts.pixel_sha256:
            by_hash[facts.pixel_sha256].append(facts.file)
    return sorted(sorted(group) for group in by_hash.values() if len(group) > 1)


def training_overlap(files: list[FileFacts], training_patients: list[str] | None, *, has_patient_ids: bool) -> dict[str, object]:
    """Which validation scans belong to patients the model was trained on, where the model lists them."""
    if training_patients is None:
        return {"checked": False, "reason": "the model's metadata does not list its training patients"}
    if not has_patient_ids:
        return {"checked": False, "reason": "the labels have no patient_id column"}
    trained = set(training_patients)
    overlapping = [facts for facts in files if facts.patient_id and facts.patient_id in trained]
    return {
        "checked": True,
        "patients": sorted({facts.patient_id for facts in overlapping if facts.patient_id}),
        "files": sorted(facts.file for facts in overlapping),
    }


def data_summary(files: list[FileFacts], training_patients: list[str] | None, *, has_patient_ids: bool) -> dict[str, object]:
    sizes = (f"{facts.width}x{facts.height}" if facts.width else None for facts in files)
    return {
        "formats": counts(facts.format for facts in files),
        "sizes": counts(sizes),
        "modes": counts(facts.mode for facts in files),
        "duplicates": duplicate_groups(files),
        "training_overlap": training_overlap(files, training_patients, has_patient_ids=has_patient_ids),
    }
