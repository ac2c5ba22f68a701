"""Real ONNX graphs that honour (or deliberately break) the model contract, built with onnx.helper.

The "mean" model computes sigmoid(weight * mean(image) + bias): cheap, deterministic and easy to
check by hand. With `heatmap_shape=("N", 256, 256)` it also outputs a `heatmap` (the input itself). `slow=True` adds convolutions so one inference takes tens of milliseconds, which
the tests use to keep the model busy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.model import contract_metadata

SIDE = 256


def build_model(
    path: Path,
    *,
    weight: float = 4.0,
    bias: float = -2.0,
    slow: bool = False,
    heatmap_shape: tuple[object, ...] | None = None,
    input_name: str = "image",
    output_name: str = "effusion_probability",
    input_shape: tuple[object, ...] = ("N", 1, SIDE, SIDE),
    metadata: dict[str, str] | None = None,
    opset: int = 17,
) -> Path:
    """Write a contract-conforming model to `path` (override arguments to break the contract)."""
    nodes = []
    initializers = [
        numpy_helper.from_array(np.array([weight], dtype=np.float32), "weight"),
        numpy_helper.from_array(np.array([bias], dtype=np.float32), "bias"),
    ]
    features = input_name
    if slow:
        rng = np.random.default_rng(0)
        w1 = rng.normal(0, 0.1, (32, 1, 7, 7)).astype(np.float32)
        w2 = rng.normal(0, 0.01, (96, 32, 3, 3)).astype(np.float32)
        w3 = np.full((1, 96, 1, 1), 1.0 / 96, dtype=np.float32)
        initializers += [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
        nodes += [
            helper.make_node("Conv", [features, "w1"], ["c1"], pads=[3, 3, 3, 3]),
            helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["c2", "w3"], ["c3"]),
        ]
        features = "c3"
    nodes += [
        helper.make_node("ReduceMean", [features], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [output_name]),
    ]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N"])]
    if heatmap_shape is not None:  # "heat" = the input's own brightness: where the opacity is, it lights up
        initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "channel_axis"))
        nodes.append(helper.make_node("Squeeze", [input_name, "channel_axis"], ["heatmap"]))
        outputs.append(helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, list(heatmap_shape)))
    graph = helper.make_graph(
        nodes,
        "test-model",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    if metadata is None:
        metadata = contract_metadata(
            threshold=0.5,
            model_name="test-mean-model",
            model_version="0.0.1",
            training_data={"synthetic": True},
            validation_metrics={"auroc": None},
        )
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def expected_probability(tensor: np.ndarray, *, weight: float = 4.0, bias: float = -2.0) -> float:
    """What the mean model returns for one preprocessed tensor, computed without ONNX Runtime."""
    return float(1.0 / (1.0 + np.exp(-(weight * float(tensor.mean()) + bias))))
