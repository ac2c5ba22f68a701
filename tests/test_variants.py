"""Model variants: an INT8 model built from a real ONNX graph keeps the contract, and is refused when its AUROC drops."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_export.variants import build_variant
from service.model import ModelError, contract_metadata, load_model
from service.prepare import prepare
from service.settings import Settings
from testkit.model_factory import build_model


@pytest.fixture(scope="module")
def scans(nih_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real NIH scans through the service's decode + preprocess, with their labels."""
    files = sorted((nih_dir / "effusion").glob("*.png"))[:12] + sorted((nih_dir / "nofinding").glob("*.png"))[:12]
    tensors = np.concatenate([prepare(path.read_bytes(), 25_000_000).tensor for path in files])
    return tensors, np.array([1] * 12 + [0] * 12)


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    """A small real CNN: 4x4 strided convolutions, ReLU, global mean, logistic output."""
    rng = np.random.default_rng(0)
    kernels = (1.0 / 16 + rng.normal(0, 0.01, (4, 1, 4, 4))).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "kernels"], ["conv"], strides=[4, 4]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("ReduceMean", ["relu"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["effusion_probability"]),
    ]
    initializers = [
        numpy_helper.from_array(kernels, "kernels"),
        numpy_helper.from_array(np.array([20.0], dtype=np.float32), "weight"),
        numpy_helper.from_array(np.array([-10.0], dtype=np.float32), "bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "small-cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 256, 256])],
        [helper.make_tensor_value_info("effusion_probability", TensorProto.FLOAT, ["N"])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, contract_metadata(threshold=0.5, model_name="small-cnn", model_version="0.0.1"))
    path = tmp_path / "conv.onnx"
    onnx.save(model, str(path))
    return path


def test_int8_variant_keeps_the_contract_and_reports_both_aurocs(source: Path, scans: tuple[np.ndarray, np.ndarray]) -> None:
    tensors, labels = scans
    report = build_variant(source, "int8", calibration=tensors[::2], evaluation=tensors, labels=labels)

    assert report.offered, report
    assert abs(report.auroc - report.fp32_auroc) <= 0.005
    served = Settings(model_path=source, model_variant="int8").model_file
    assert served == source.with_name("conv.int8.onnx") and str(served) == report.path
    variant = load_model(served, policy="cpu")  # contract and signature checked by the service's loader
    original = load_model(source, policy="cpu")
    assert variant.contract.model_name == original.contract.model_name
    assert variant.contract.threshold == original.contract.threshold
    assert variant.contract.metadata["variant"]["variant"] == "int8"
    assert variant.contract.metadata["variant"]["fp32_auroc"] == pytest.approx(report.fp32_auroc)
    assert "QLinearConv" in {node.op_type for node in onnx.load(str(served)).graph.node}  # really integer arithmetic
    np.testing.assert_allclose(variant.predict(tensors[:4]), original.predict(tensors[:4]), atol=0.02)


def test_variant_whose_auroc_drops_is_not_offered(source: Path, scans: tuple[np.ndarray, np.ndarray]) -> None:
    tensors, labels = scans
    stale = source.with_name("conv.int8.onnx")
    shutil.copy(source, stale)  # an earlier variant that the new check no longer supports
    blank = np.zeros_like(tensors[:4])  # calibration ranges of nothing: INT8 flattens every score
    report = build_variant(source, "int8", calibration=blank, evaluation=tensors, labels=labels)

    assert not report.offered and report.path is None
    assert report.fp32_auroc - report.auroc > 0.005
    assert not stale.exists()


def test_a_variant_of_another_model_is_refused(tmp_path: Path) -> None:
    """Serving `<stem>.int8.onnx` beside a retrained `<stem>.onnx` would run stale weights: refused at start-up."""
    fp32 = build_model(tmp_path / "m.onnx")
    metadata = contract_metadata(
        threshold=0.5, model_name="m", model_version="1", variant={"variant": "int8", "source_sha256": "0" * 64}
    )
    variant = build_model(tmp_path / "m.int8.onnx", metadata=metadata)
    with pytest.raises(ModelError, match="built from another model"):
        load_model(variant, policy="cpu", variant_of=fp32)
    load_model(variant, policy="cpu")  # without a source to check against, the file itself is valid
