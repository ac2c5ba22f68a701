"""The model contract: what load_model accepts, and the one-line reasons it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.model import ModelError, contract_metadata, load_model, parse_contract
from service.preprocessing import PREPROCESSING_ID
from service.resources import available_cpus, cgroup_cpu_quota
from testkit.model_factory import build_model, expected_probability


def refusal(path: Path) -> str:
    with pytest.raises(ModelError) as error:
        load_model(path, policy="cpu")
    message = str(error.value)
    assert "\n" not in message
    return message


def good_metadata(**overrides: str) -> dict[str, str]:
    metadata = contract_metadata(threshold=0.3, model_name="m", model_version="1.0")
    metadata.update(overrides)
    return metadata


def test_conforming_model_loads_and_reports_itself(mean_model: Path) -> None:
    model = load_model(mean_model, policy="cpu")
    assert model.contract.preprocessing_id == PREPROCESSING_ID
    assert model.contract.class_names == ("no_effusion", "effusion")
    assert model.execution_provider == "CPUExecutionProvider"
    assert len(model.sha256) == 64
    assert model.provider_problem("cpu") is None
    assert model.provider_problem("auto") is None


def test_predict_runs_a_batch(mean_model: Path) -> None:
    model = load_model(mean_model, policy="cpu")
    batch = np.stack([np.full((1, 256, 256), v, dtype=np.float32) for v in (0.0, 0.5, 1.0)])
    probabilities = model.predict(batch)
    assert probabilities.shape == (3,)
    for tensor, probability in zip(batch, probabilities, strict=True):
        assert probability == pytest.approx(expected_probability(tensor), abs=1e-6)


def test_wrong_input_name_is_refused(tmp_path: Path) -> None:
    message = refusal(build_model(tmp_path / "m.onnx", input_name="pixels"))
    assert "'pixels'" in message and "'image'" in message


def test_wrong_input_shape_is_refused(tmp_path: Path) -> None:
    message = refusal(build_model(tmp_path / "m.onnx", input_shape=("N", 1, 224, 224)))
    assert "shape" in message and "224" in message


def test_fixed_batch_dimension_is_refused(tmp_path: Path) -> None:
    assert "dynamic N" in refusal(build_model(tmp_path / "m.onnx", input_shape=(1, 1, 256, 256)))


def test_wrong_output_name_is_refused(tmp_path: Path) -> None:
    assert "effusion_probability" in refusal(build_model(tmp_path / "m.onnx", output_name="prob"))


def test_foreign_preprocessing_is_refused(tmp_path: Path) -> None:
    path = build_model(tmp_path / "m.onnx", metadata=good_metadata(preprocessing_id="imagenet-224/v1"))
    message = refusal(path)
    assert "imagenet-224/v1" in message and PREPROCESSING_ID in message


def test_model_without_contract_is_refused(tmp_path: Path) -> None:
    assert "contract keys" in refusal(build_model(tmp_path / "m.onnx", metadata={}))


def test_missing_and_invalid_files_are_refused(tmp_path: Path) -> None:
    assert "cannot read" in refusal(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    assert "not a loadable ONNX model" in refusal(junk)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("contract_version", "2", "contract version"),
        ("threshold", "1.5", "outside (0, 1)"),
        ("threshold", "high", "not a number"),
        ("class_names", '["effusion", "no_effusion"]', "class 1"),
        ("class_names", "effusion", "not valid JSON"),
        ("model_version", "", "must not be empty"),
    ],
)
def test_contract_fields_are_checked(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ModelError) as error:
        parse_contract(good_metadata(**{key: value}))
    assert fragment in str(error.value)


def test_contract_round_trips_and_labels_by_threshold() -> None:
    contract = parse_contract(good_metadata(validation_metrics='{"auroc": 0.7}'))
    assert contract.threshold == 0.3
    assert contract.metadata["validation_metrics"] == {"auroc": 0.7}
    assert contract.label(0.3) == "effusion"
    assert contract.label(0.29) == "no_effusion"


def test_cpu_quota_from_cgroup_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))  # a 64-core host
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert available_cpus(tmp_path) == 2  # the container's 1.5 CPUs, rounded up; not the host's 64
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    assert available_cpus(tmp_path) == 64


def test_cpu_quota_from_cgroup_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.0
    assert available_cpus(tmp_path) == 1
