"""The scans in examples/ (real NIH chest X-rays, in the repository) through the shipped model and the real app,
so a fresh clone's test run exercises real data; the larger shared set is not needed here."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import DEFAULT_MODEL_PATH
from tests.conftest import EXAMPLES, REPO_ROOT, make_settings, wait_ready

SCANS = sorted(path for path in EXAMPLES.rglob("*") if path.suffix in (".png", ".dcm"))


def test_the_examples_are_the_ones_their_readme_lists() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    assert len(SCANS) == 5 and sum(path.stat().st_size for path in SCANS) < 4 * 1024 * 1024
    for path in SCANS:
        assert f"`{path.relative_to(EXAMPLES)}`" in readme


@pytest.fixture(scope="module")
def shipped() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(REPO_ROOT / DEFAULT_MODEL_PATH))) as client:
        wait_ready(client, timeout=120)
        yield client


def test_every_example_scores_with_the_shipped_model(shipped: TestClient) -> None:
    answers = {}
    for path in SCANS:
        response = shipped.post("/predict", files={"file": (path.name, path.read_bytes())})
        assert response.status_code == 200, (path, response.text)
        body = response.json()
        assert body["input"]["width"] == body["input"]["height"] == 1024
        answers[path.relative_to(EXAMPLES).as_posix()] = body
    dicom, png = answers["effusion/00009211_000.dcm"], answers["effusion/00009211_000.png"]
    assert dicom["input"]["format"] == "dicom" and dicom["input"]["mode"] == "MONOCHROME2"
    assert dicom["effusion_probability"] == pytest.approx(png["effusion_probability"], abs=1e-4)


def test_each_example_is_the_shared_file_its_readme_names(nih_dir: Path) -> None:
    """Provenance: each PNG is byte for byte the shared file its README row names, with that label."""
    with open(nih_dir / "labels.csv", newline="") as handle:
        labels = {row["filename"]: row["label"] for row in csv.DictReader(handle)}
    for path in SCANS:
        if path.suffix == ".png":
            assert labels[path.name] == path.parent.name
            assert path.read_bytes() == (nih_dir / path.parent.name / path.name).read_bytes()
