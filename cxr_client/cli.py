"""The `cxr-effusion` command line: one parser, one module per command.

Each command's module is imported only when that command runs, so `cxr-effusion predict` against a
server never loads numpy, the model runtime or the report's plotting stack.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr_client import dicomweb, predict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-effusion", description="Score chest X-rays for pleural effusion.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict.add_parser(commands)
    _add_validate(commands)
    _add_set_threshold(commands)
    dicomweb.add_parser(commands)
    return parser


def _add_validate(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser(
        "validate",
        help="validate a model on your own labelled scans; writes an HTML report",
        description="Score labelled scans (class folders effusion/, nofinding/, other/, or a CSV with filename,label) "
        "with the service's own code, locally or through a running deployment (--url), and write "
        "DIR/report.html, DIR/report.json and DIR/predictions.csv. An interrupted run resumes where it stopped.",
    )
    validate.add_argument("data", type=Path, help="folder of scans (PNG, JPEG, DICOM), searched recursively")
    validate.add_argument(
        "--labels", type=Path, default=None, help="CSV with filename,label (optional patient_id and other columns)"
    )
    where = validate.add_mutually_exclusive_group()
    where.add_argument("--model", type=Path, default=None, help="score locally with this ONNX file (default: the shipped model)")
    where.add_argument("--url", default=None, help="score through the running service at this base URL")
    validate.add_argument("--output", "-o", type=Path, required=True, help="folder for the report (created if missing)")
    validate.add_argument(
        "--target-sensitivity",
        type=float,
        action="append",
        default=None,
        help="operating point to report, as a sensitivity in (0, 1); repeatable (default: 0.90 and 0.95)",
    )
    validate.add_argument("--by", action="append", default=[], help="CSV column for a subgroup table; repeatable")
    validate.add_argument("--examples", type=int, default=5, help="most confident false negatives/positives shown (each)")
    validate.add_argument("--concurrency", "-c", type=int, default=None, help="scans in flight (default: 2 local, 4 --url)")
    predict.add_http_options(validate)
    validate.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_set_threshold(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "set-threshold",
        help="write a copy of a model with a site's decision threshold",
        description="Write a copy of MODEL whose contract carries the chosen threshold, with the change's provenance "
        "(source sha256, date, validation report) in its metadata. The source file is never modified.",
    )
    command.add_argument("model", type=Path, help="the ONNX model to copy")
    command.add_argument("--threshold", type=float, required=True, help="the new decision threshold, in (0, 1)")
    command.add_argument("--report", type=Path, required=True, help="the report.json of the validation that chose it")
    command.add_argument("--output", "-o", type=Path, required=True, help="the new ONNX file (must not exist yet)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        from cxr_client.validate.command import run_command
    elif args.command == "set-threshold":
        from cxr_client.set_threshold import run_command
    elif args.command == "dicomweb":
        run_command = dicomweb.run_command
    else:
        run_command = predict.run_command
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
