"""Where a scan's truth comes from: its class folder, or a row of the site's CSV.

A CSV row names a file by its path under DATA, by its file name alone (when that is unique), or,
for DICOM, by its SOPInstanceUID, since PACS exports often name files by UID or by nothing useful.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

POSITIVE = "effusion"
NEGATIVE_FOLDERS = ("nofinding", "other")
POSITIVE_VALUES = {"effusion", "1", "positive", "true", "yes"}
NEGATIVE_VALUES = {"nofinding", "no_finding", "no finding", "other", "0", "negative", "false", "no"}


class InputError(Exception):
    """The labels cannot be used; the message is one line that says what to fix."""


def parse_label(value: str) -> int:
    """1 for effusion, 0 for no effusion; anything else is an error, never a guess."""
    text = value.strip().lower()
    if text in POSITIVE_VALUES:
        return 1
    if text in NEGATIVE_VALUES:
        return 0
    raise InputError(f"label {value!r} is neither effusion (effusion, 1) nor no effusion (nofinding, other, 0)")


@dataclass(frozen=True)
class LabelRow:
    """One CSV row: its truth and every column, for subgroups and the patient check."""

    key: str
    label: int
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class LabelTable:
    """The site's CSV, indexed by every way a row may name a file."""

    rows: list[LabelRow]
    columns: list[str]

    def __post_init__(self) -> None:
        self._by_key = {row.key: row for row in self.rows}

    def find(self, relative: str, sop_instance_uid: str | None) -> LabelRow | None:
        """The row for a file: by path under DATA, by its file name, then by DICOM SOPInstanceUID."""
        for key in (relative, Path(relative).name, sop_instance_uid):
            if key and key in self._by_key:
                return self._by_key[key]
        return None


def read_label_table(path: Path, *, by: list[str]) -> LabelTable:
    """Read and check the CSV up front, so a typo fails before hours of scoring."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read the labels CSV {path}: {error}") from error
    for needed in ("filename", "label", *by):
        if needed not in columns:
            raise InputError(f"the labels CSV {path} has no column {needed!r} (columns: {', '.join(columns) or 'none'})")
    rows = []
    for number, values in enumerate(raw, start=2):  # line 1 is the header
        try:
            label = parse_label(values["label"] or "")
        except InputError as error:
            raise InputError(f"{path} line {number}: {error}") from None
        rows.append(LabelRow(values["filename"].strip(), label, {name: (values[name] or "").strip() for name in columns}))
    repeated = [key for key, count in Counter(row.key for row in rows).items() if count > 1]
    if repeated:
        raise InputError(f"the labels CSV {path} names {repeated[0]!r} more than once")
    return LabelTable(rows, columns)


def folder_label(relative: str) -> int | None:
    """The truth a class-folder tree gives a file (its top folder under DATA), or None outside one."""
    parts = Path(relative).parts
    if len(parts) < 2:
        return None
    top = parts[0].lower()
    if top == POSITIVE:
        return 1
    if top in NEGATIVE_FOLDERS:
        return 0
    return None


def check_unambiguous(table: LabelTable, relatives: list[str]) -> None:
    """A row that names a file by a bare name must not fit two files in different folders."""
    paths = set(relatives)
    names = Counter(Path(relative).name for relative in relatives)
    for row in table.rows:
        if row.key not in paths and names[row.key] > 1:
            fitting = sorted(relative for relative in relatives if Path(relative).name == row.key)
            raise InputError(
                f"the labels CSV names {row.key!r}, which fits {len(fitting)} files ({', '.join(fitting[:3])}); "
                "name it by its path under DATA"
            )
