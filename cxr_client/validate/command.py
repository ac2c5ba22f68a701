"""`cxr-effusion validate`: read labels, score every scan (resumably), write the report.

Scores are appended to DIR/scoring-journal.csv one row at a time, through `predict`'s writer and
runner, so an interrupted run resumes where it stopped; the journal is removed once every file
has a final answer. Bad input is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr_client.validate.inputs import LabelTable
    from cxr_client.validate.report import Case
    from cxr_client.validate.scoring import Scorer

MISSING_EXTRA = "validate needs scikit-learn and matplotlib: pip install 'cxr-effusion[validate]'"
JOURNAL = "scoring-journal.csv"


def run_command(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    from cxr_client.validate.inputs import InputError

    try:
        return _validate(args)
    except InputError as error:
        print(f"validate: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("validate: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _validate(args: argparse.Namespace) -> int:
    from cxr_client.predict import find_scans
    from cxr_client.validate.inputs import InputError, check_unambiguous, read_label_table

    targets = tuple(args.target_sensitivity or (0.90, 0.95))
    if not args.data.is_dir():
        raise InputError(f"{args.data} is not a folder")
    if any(not 0.0 < target < 1.0 for target in targets):
        raise InputError("--target-sensitivity must be between 0 and 1, e.g. 0.9")
    if args.by and args.labels is None:
        raise InputError("--by names a CSV column: give the CSV with --labels")
    table = read_label_table(args.labels, by=args.by) if args.labels else None
    files = find_scans([args.data])
    if not files:
        raise InputError(f"no PNG, JPEG or DICOM files under {args.data}")
    relatives = [path.relative_to(args.data).as_posix() for path in files]
    if table is not None:
        check_unambiguous(table, relatives)

    scorer = _scorer(args)
    args.output.mkdir(parents=True, exist_ok=True)
    journal = args.output / JOURNAL
    done = _journal_rows(journal, scorer.model.sha256)
    todo = [path for path in files if not _final(done.get(str(path)))]
    concurrency = args.concurrency or (4 if args.url else 2)
    _score(todo, scorer, journal, concurrency=concurrency, progress=not args.no_progress)
    rows = _journal_rows(journal, scorer.model.sha256)
    return _write_outputs(args, files, relatives, rows, table, scorer, targets, journal)


def _scorer(args: argparse.Namespace) -> Scorer:
    from cxr_client.validate.inputs import InputError
    from cxr_client.validate.scoring import RemoteError, local_scorer, remote_scorer

    if args.url:
        try:
            return remote_scorer(args.url, api_key=args.api_key, timeout=args.timeout, retries=args.retries)
        except RemoteError as error:
            raise InputError(str(error)) from None
    from service.model import ModelError
    from service.settings import Settings

    try:
        return local_scorer(args.model or Settings().model_path)
    except ModelError as error:
        raise InputError(str(error)) from None


def _score(todo: list[Path], scorer: Scorer, journal: Path, *, concurrency: int, progress: bool) -> None:
    from cxr_client.predict import RowWriter, run
    from cxr_client.validate.scoring import JOURNAL_COLUMNS

    writer = RowWriter(journal, JOURNAL_COLUMNS)
    try:
        run(todo, scorer.score, writer, concurrency=max(1, concurrency), progress=progress)
    finally:
        writer.close()


def _final(row: dict[str, str] | None) -> bool:
    """True when a journal row is an answer (a score or a permanent refusal), not a failure worth retrying."""
    from cxr_client.predict import TRANSIENT_CODES

    return row is not None and (row.get("error_code") or None) not in TRANSIENT_CODES


def _journal_rows(journal: Path, sha256: str) -> dict[str, dict[str, str]]:
    """The journal's last row per file; refuses a journal written with another model."""
    from cxr_client.validate.inputs import InputError

    if not journal.exists():
        return {}
    from cxr_client.validate.scoring import JOURNAL_COLUMNS

    with journal.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {row["file"]: row for row in reader}
    if reader.fieldnames != JOURNAL_COLUMNS:
        raise InputError(f"{journal} was not written by this version of validate; use a new --output")
    others = {row["model_sha256"] for row in rows.values() if row.get("model_sha256") and row["model_sha256"] != sha256}
    if others:
        raise InputError(f"{journal} holds scores of another model (sha256 {sorted(others)[0][:12]}...); use a new --output")
    return rows


def _write_outputs(
    args: argparse.Namespace,
    files: list[Path],
    relatives: list[str],
    rows: dict[str, dict[str, str]],
    table: LabelTable | None,
    scorer: Scorer,
    targets: tuple[float, ...],
    journal: Path,
) -> int:
    from cxr_client.validate.inputs import folder_label
    from cxr_client.validate.report import Case, Options, build_report
    from cxr_client.validate.summary import FileFacts

    cases = []
    matched: set[str] = set()
    for path, relative in zip(files, relatives):
        row = rows.get(str(path)) or {}
        final = _final(row or None)
        uid = row.get("sop_instance_uid") or None
        label_row = table.find(relative, uid) if table is not None else None
        columns = label_row.columns if label_row else {}
        if label_row:
            matched.add(label_row.key)
        label = label_row.label if label_row else (folder_label(relative) if table is None else None)
        probability = row.get("effusion_probability")
        facts = FileFacts(
            relative, row.get("format") or None, _int(row.get("width")), _int(row.get("height")),
            row.get("mode") or None, row.get("pixel_sha256") or None, columns.get("patient_id") or None,
        )  # fmt: skip
        cases.append(
            Case(
                relative, label, float(probability) if probability else None,
                row.get("error_code") or ("not_scored" if not row else None), row.get("error_message") or None,
                not final, facts, columns,
            )  # fmt: skip
        )
    missing = tuple(sorted(r.key for r in table.rows if r.key not in matched)) if table is not None else ()
    options = Options(str(args.data), str(args.labels) if args.labels else None, targets, tuple(args.by), args.examples, missing)
    report = build_report(cases, scorer.model, options)
    _write(args.output, report, cases, scorer)
    unfinished = len(report["data"]["not_scored_yet"])
    if not unfinished:
        journal.unlink(missing_ok=True)
    data = report["data"]
    print(
        f"{data['scored_with_label']} scans scored with a label ({data['positives']} effusion), {len(data['refused'])} refused, "
        f"{len(data['unlabelled'])} without a label, {unfinished} left for a rerun -> {args.output / 'report.html'}",
        file=sys.stderr,
    )
    if not data["scored_with_label"]:
        print("validate: no scored scan has a label: use folders effusion/, nofinding/, other/ under DATA, or --labels CSV", file=sys.stderr)
        return 1
    return 1 if unfinished else 0


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _write(output: Path, report: dict[str, Any], cases: list[Case], scorer: Scorer) -> None:
    from cxr_client.validate import plots
    from cxr_client.validate.metrics import OperatingPoint, calibration
    from cxr_client.validate.report import arrays, scored
    from cxr_client.validate.report_html import Figures, render_html

    usable = scored(cases)
    labels, probabilities = arrays(usable)
    drawable = bool(labels.size) and 0 < labels.sum() < labels.size
    points = [OperatingPoint(**point) for point in report["operating_points"]]
    root = Path(report["data"]["folder"])
    examples = {}
    for case in report["examples"]["false_negatives"] + report["examples"]["false_positives"]:
        try:
            examples[case["file"]] = scorer.explain(root / case["file"])
        except Exception as error:  # an example without pictures is better than no report; the reason is logged
            print(f"validate: no picture for {case['file']}: {type(error).__name__}", file=sys.stderr)
    figures = Figures(
        plots.roc_png(labels, probabilities, points) if drawable else None,
        plots.pr_png(labels, probabilities) if drawable else None,
        plots.reliability_png(calibration(labels, probabilities)[1]) if labels.size else None,
        examples,
    )
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.html").write_text(render_html(report, figures))
    _write_predictions(output / "predictions.csv", cases, report["model"]["threshold"])


def _write_predictions(path: Path, cases: list[Case], threshold: float) -> None:
    extra = sorted({name for case in cases for name in case.columns} - {"filename", "label"})
    header = ["file", "label", "effusion_probability", "flagged_at_model_threshold", "error_code", "error_message",
              "format", "width", "height", "mode", "pixel_sha256", *extra]  # fmt: skip
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for case in cases:
            label = {1: "effusion", 0: "no_effusion"}.get(case.label, "")
            probability = "" if case.probability is None else f"{case.probability:.6f}"
            flagged = "" if case.probability is None else int(case.probability >= threshold)
            facts = case.facts
            writer.writerow(
                [case.file, label, probability, flagged, case.error_code or "", case.error_message or "",
                 facts.format or "", facts.width or "", facts.height or "", facts.mode or "", facts.pixel_sha256 or "",
                 *(case.columns.get(name, "") for name in extra)]  # fmt: skip
            )
