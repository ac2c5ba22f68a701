"""`cxr-effusion predict` against the real server process, and in --local mode."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_client.predict import main
from testkit.live_server import REPO_ROOT, running_service
from tests.reference import direct_probability


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory: pytest.TempPathFactory, nih_dir: Path) -> Path:
    """All 222 NIH scans in nested folders, plus a text file with a scan suffix and a stray note."""
    folder = tmp_path_factory.mktemp("archive")
    for label in ("effusion", "nofinding", "other"):
        shutil.copytree(nih_dir / label, folder / label)
    (folder / "other" / "broken.png").write_bytes(b"not really a png")
    (folder / "README.txt").write_text("ignored: not a scan suffix")
    return folder


def test_scores_a_folder_into_a_correct_csv(scan_folder: Path, mean_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "results.csv"
    with running_service(mean_model) as server:
        status = main(["predict", str(scan_folder), "--url", server.url, "-o", str(output), "--no-progress"])
    assert status == 1  # one file failed, and the exit status says so
    rows = read_rows(output)
    assert len(rows) == 223 and len({row["file"] for row in rows}) == 223
    failed = [row for row in rows if row["error_code"]]
    assert [(Path(row["file"]).name, row["error_code"]) for row in failed] == [("broken.png", "unsupported_media_type")]
    by_name = {Path(row["file"]).name: row for row in rows}
    for name, label in (("00000282_000.png", "effusion"), ("00005813_000.png", "nofinding")):
        row = by_name[name]
        expected = direct_probability(mean_model, scan_folder / label / name)
        assert float(row["effusion_probability"]) == pytest.approx(expected, abs=1e-5)
        assert row["model_name"] == "test-mean-model" and row["label"] in ("effusion", "no_effusion")


def test_interrupted_run_resumes_without_losing_results(scan_folder: Path, slow_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "results.csv"
    command = [sys.executable, "-m", "cxr_client", "predict", str(scan_folder), "-o", str(output), "-c", "2"]
    # The slow model keeps the run going for seconds, so Ctrl-C lands in its middle on any machine.
    with running_service(slow_model) as server:
        process = subprocess.Popen(
            [*command, "--url", server.url],
            cwd=REPO_ROOT,
            stderr=subprocess.PIPE,
            # A shell's background job inherits SIGINT ignored, and so would the client: restore it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while (not output.exists() or len(output.read_text().splitlines()) < 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the run
        _, stderr = process.communicate(timeout=30)
        assert process.returncode != 0
        written = read_rows(output)
        assert 19 <= len(written) < 223, "the run was not interrupted in the middle"

        rerun = subprocess.run([*command, "--url", server.url], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert f"{len(written)} already done" in rerun.stderr
    rows = read_rows(output)
    assert rows[: len(written)] == written  # nothing already written was lost or rewritten
    assert len(rows) == 223 and len({row["file"] for row in rows}) == 223


def test_retries_overloaded_responses_until_scored(nih_dir: Path, slow_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "results.jsonl"
    scans = sorted((nih_dir / "effusion").iterdir())[:12]
    with running_service(slow_model, CXR_MAX_QUEUE="2", CXR_MAX_BATCH="1", CXR_INTRA_OP_THREADS="1") as server:
        args = ["predict", *map(str, scans), "--url", server.url, "-o", str(output), "-c", "4", "--retries", "30", "--no-progress"]
        assert main(args) == 0
        metrics_hint = server.log()
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 12 and all(row["effusion_probability"] is not None for row in rows)
    assert "overloaded" in metrics_hint or '" 503' in metrics_hint, "the queue never overflowed: no retry was tested"


def test_local_mode_matches_the_service(nih_dir: Path, mean_model: Path, tmp_path: Path) -> None:
    scans = sorted((nih_dir / "nofinding").iterdir())[:5]
    local, remote = tmp_path / "local.csv", tmp_path / "remote.csv"
    assert main(["predict", *map(str, scans), "--local", "--model", str(mean_model), "-o", str(local), "--no-progress"]) == 0
    with running_service(mean_model) as server:
        assert main(["predict", *map(str, scans), "--url", server.url, "-o", str(remote), "--no-progress"]) == 0
    by_file = {row["file"]: float(row["effusion_probability"]) for row in read_rows(remote)}
    for row in read_rows(local):
        assert float(row["effusion_probability"]) == pytest.approx(by_file[row["file"]], abs=1e-6)


def test_unreachable_service_is_a_transient_error_left_for_the_next_run(nih_png: Path, tmp_path: Path) -> None:
    output = tmp_path / "results.csv"
    args = ["predict", str(nih_png), "--url", "http://127.0.0.1:9", "-o", str(output), "--retries", "0", "--no-progress"]
    assert main(args) == 1
    assert read_rows(output)[0]["error_code"] == "connection_error"
    assert main(args) == 1  # retried on the next run, not skipped as done
    assert len(read_rows(output)) == 2


def test_a_missing_file_is_an_error_row_not_an_aborted_run(nih_png: Path, tmp_path: Path) -> None:
    output = tmp_path / "results.csv"
    missing = tmp_path / "typo.png"
    args = ["predict", str(missing), str(nih_png), "--url", "http://127.0.0.1:9", "-o", str(output), "--retries", "0", "--no-progress"]
    assert main(args) == 1
    codes = {row["file"]: row["error_code"] for row in read_rows(output)}
    assert codes == {str(missing): "unreadable_file", str(nih_png): "connection_error"}
    assert main(args) == 1  # left for the next run, once the file is there
    assert len(read_rows(output)) == 4


def test_help_explains_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cxr_client", "predict", "--help"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, "COLUMNS": "200"},
    )
    for option in ("--url", "--local", "--model", "--output", "--concurrency", "--retries", "--api-key"):
        assert option in result.stdout


def test_a_200_that_is_not_a_prediction_becomes_a_transient_error_row(tmp_path: Path) -> None:
    import httpx

    from cxr_client.predict import TRANSIENT_CODES, _row_from_response

    for answer in (httpx.Response(200, text="<html>login</html>"), httpx.Response(200, json={"status": "ok"})):
        row = _row_from_response(tmp_path / "a.png", answer)
        assert row.error_code == "invalid_response" and row.effusion_probability is None
        assert row.error_code in TRANSIENT_CODES
