"""CXR_MODEL_VARIANT=auto (the default): the INT8 sibling on CPU when its recorded guard passed, else FP32;
an explicit variant wins; /model and /ready say which runs and why. Real ONNX models, the real app."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.model import ModelError, contract_metadata
from service.variant_choice import load_served_model
from testkit.model_factory import build_model
from tests.conftest import make_settings, wait_ready


def build_pair(folder: Path, *, auroc: float | None) -> tuple[Path, Path]:
    """An FP32 model and an `.int8.onnx` sibling built from it, whose `variant` metadata records `auroc`
    against FP32's 0.80 (None: no guard recorded). The sibling's weight differs, so answers tell them apart."""
    fp32 = build_model(folder / "m.onnx")
    facts: dict[str, object] = {"variant": "int8", "source_sha256": hashlib.sha256(fp32.read_bytes()).hexdigest()}
    if auroc is not None:
        facts.update(auroc=auroc, fp32_auroc=0.80, auroc_tolerance=0.005, images=64)
    metadata = contract_metadata(threshold=0.5, model_name="test-mean-model", model_version="0.0.1", variant=facts)
    return fp32, build_model(folder / "m.int8.onnx", weight=3.0, metadata=metadata)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_auto_serves_the_int8_sibling_on_cpu_and_says_why(tmp_path: Path) -> None:
    fp32, int8 = build_pair(tmp_path, auroc=0.798)
    with TestClient(create_app(make_settings(fp32))) as client:  # model_variant left at its default
        wait_ready(client)
        model, ready = client.get("/model").json(), client.get("/ready").json()
    assert model["model"]["sha256"] == ready["model"]["sha256"] == sha256(int8)
    assert model["variant"] == ready["variant"]
    assert model["variant"]["name"] == "int8"
    assert model["variant"]["reason"] == "auto on CPU: INT8 AUROC 0.7980 is within 0.005 of FP32's 0.8000"


@pytest.mark.parametrize(
    ("auroc", "reason"),
    [
        (0.70, "auto on CPU: INT8 AUROC 0.7000 is not within 0.005 of FP32's 0.8000"),
        (None, "auto on CPU: the INT8 variant records no AUROC guard"),
    ],
)
def test_auto_serves_fp32_when_the_int8_guard_did_not_pass(tmp_path: Path, auroc: float | None, reason: str) -> None:
    fp32, _ = build_pair(tmp_path, auroc=auroc)
    served = load_served_model(make_settings(fp32))
    assert (served.variant, served.reason, served.model.sha256) == ("fp32", reason, sha256(fp32))


def test_auto_serves_fp32_without_a_sibling_or_with_one_of_another_model(tmp_path: Path) -> None:
    alone = build_model(tmp_path / "alone.onnx")
    served = load_served_model(make_settings(alone))
    assert (served.variant, served.model.sha256) == ("fp32", sha256(alone))
    assert served.reason == f"auto on CPU: there is no INT8 variant {tmp_path / 'alone.int8.onnx'}"

    fp32, _ = build_pair(tmp_path, auroc=0.80)
    build_model(fp32, bias=-1.0)  # retrained after the variant was built: the sibling is stale
    served = load_served_model(make_settings(fp32))
    assert served.variant == "fp32" and served.reason.startswith("auto on CPU: the INT8 variant was refused: the variant was built")


def test_an_explicit_variant_wins(tmp_path: Path) -> None:
    fp32, int8 = build_pair(tmp_path, auroc=0.70)
    assert load_served_model(make_settings(fp32, model_variant="fp32")).model.sha256 == sha256(fp32)
    forced = load_served_model(make_settings(fp32, model_variant="int8"))  # the operator's choice, guard or not
    assert (forced.variant, forced.reason, forced.model.sha256) == ("int8", "CXR_MODEL_VARIANT=int8", sha256(int8))
    with pytest.raises(ModelError, match="cannot read model file"):
        load_served_model(make_settings(fp32, model_variant="fp16"))
