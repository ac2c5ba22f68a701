"""`cxr-effusion set-threshold`: a copy of a model with a site's threshold, and the change's provenance.

A site's operating point is a decision about patients, so it is made explicitly and leaves a trace:
the new file carries the threshold in its contract, plus `threshold_change` (the source model's
sha256 and threshold, the date, the validation report and its sha256). Its own sha256 differs, so
every response of a service serving it names the new file. The source file is never modified.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MISSING_ONNX = "set-threshold needs onnx: pip install 'cxr-effusion[validate]'"


class ThresholdError(Exception):
    """The copy cannot be written; the message is one line that says why."""


def run_command(args: argparse.Namespace) -> int:
    try:
        new_sha256 = write_with_threshold(args.model, args.threshold, args.report, args.output)
    except ThresholdError as error:
        print(f"set-threshold: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} (sha256 {new_sha256}) with threshold {args.threshold}; serve it to use it", file=sys.stderr)
    return 0


def read_report(report: Path) -> dict[str, Any]:
    try:
        content = json.loads(report.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ThresholdError(f"cannot read the validation report {report}: {error}") from None
    if not isinstance(content, dict) or "schema_version" not in content or "model" not in content:
        raise ThresholdError(f"{report} is not a report.json written by `cxr-effusion validate`")
    return content


def write_with_threshold(model: Path, threshold: float, report: Path, output: Path) -> str:
    """Write the copy and return its sha256, after checking the report validated exactly this model."""
    try:
        import onnx
    except ImportError:
        raise ThresholdError(MISSING_ONNX) from None
    from service.model import ModelError, load_model

    if not 0.0 < threshold < 1.0:
        raise ThresholdError(f"the threshold must be between 0 and 1, got {threshold}")
    if output.exists():
        raise ThresholdError(f"{output} exists; choose a new file name (a served model is never changed in place)")
    try:
        source = load_model(model, policy="cpu")
    except ModelError as error:
        raise ThresholdError(str(error)) from None
    validation = read_report(report)
    if validation["model"].get("sha256") != source.sha256:
        raise ThresholdError(f"{report} validated another model (sha256 {str(validation['model'].get('sha256'))[:12]}...), not {model}")
    proto = onnx.load(str(model))
    change = {
        "source_sha256": source.sha256,
        "source_threshold": source.contract.threshold,
        "threshold": float(threshold),
        "changed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "report": {
            "file": str(report),
            "sha256": hashlib.sha256(report.read_bytes()).hexdigest(),
            "created_at": validation.get("created_at"),
            "data": validation.get("data", {}).get("folder"),
        },
    }
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    metadata["threshold"] = repr(float(threshold))
    metadata["threshold_change"] = json.dumps(change, sort_keys=True)
    onnx.helper.set_model_props(proto, metadata)
    partial = output.with_name(output.name + ".partial")
    onnx.save(proto, str(partial))
    try:
        written = load_model(partial, policy="cpu")  # the service's own check, before the file gets its name
    except ModelError as error:
        partial.unlink()
        raise ThresholdError(f"the copy does not load: {error}") from None
    os.replace(partial, output)
    return written.sha256
