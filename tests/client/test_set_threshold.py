"""`cxr-effusion set-threshold`: a new file with the site's threshold and its provenance; the source never changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from cxr_client.cli import main
from service.model import load_model
from testkit.live_server import running_service
from testkit.model_factory import build_model


@pytest.fixture()
def validated(tmp_path: Path) -> tuple[Path, Path]:
    """A model and a report.json of a validation of exactly that model (only the fields set-threshold reads)."""
    model = build_model(tmp_path / "site.onnx")
    report = tmp_path / "report.json"
    sha = load_model(model).sha256
    report.write_text(json.dumps({"schema_version": 1, "created_at": "2026-12-05T10:00:00+00:00", "model": {"sha256": sha}, "data": {"folder": "/scans"}}))
    return model, report


def test_writes_a_copy_with_the_threshold_and_its_provenance_and_the_service_serves_it(
    validated: tuple[Path, Path], tmp_path: Path
) -> None:
    model, report = validated
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    output = tmp_path / "site-threshold.onnx"
    assert main(["set-threshold", str(model), "--threshold", "0.3125", "--report", str(report), "-o", str(output)]) == 0
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before  # the source is untouched
    copy = load_model(output)
    assert copy.contract.threshold == 0.3125 and copy.sha256 != before
    change = copy.contract.metadata["threshold_change"]
    assert change["source_sha256"] == before and change["source_threshold"] == 0.5 and change["threshold"] == 0.3125
    assert change["report"]["sha256"] == hashlib.sha256(report.read_bytes()).hexdigest()
    assert change["report"]["created_at"] == "2026-12-05T10:00:00+00:00" and change["changed_at"]
    assert not list(tmp_path.glob("*.partial"))
    with running_service(output) as server:
        served = httpx.get(f"{server.url}/model").json()
    assert served["model"]["sha256"] == copy.sha256 and served["threshold"] == 0.3125
    assert served["metadata"]["threshold_change"]["source_sha256"] == before


@pytest.mark.parametrize(
    ("threshold", "report_model_sha", "message"),
    [
        ("1.5", None, "between 0 and 1"),
        ("0.4", "0" * 64, "validated another model"),
    ],
)
def test_refuses_with_one_line(
    validated: tuple[Path, Path], tmp_path: Path, capsys, threshold: str, report_model_sha: str | None, message: str
) -> None:
    model, report = validated
    if report_model_sha:
        report.write_text(json.dumps({"schema_version": 1, "model": {"sha256": report_model_sha}}))
    assert main(["set-threshold", str(model), "--threshold", threshold, "--report", str(report), "-o", str(tmp_path / "new.onnx")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "new.onnx").exists()


def test_never_overwrites(validated: tuple[Path, Path], capsys) -> None:
    model, report = validated
    before = model.read_bytes()
    assert main(["set-threshold", str(model), "--threshold", "0.4", "--report", str(report), "-o", str(model)]) == 2
    assert "exists" in capsys.readouterr().err and model.read_bytes() == before
