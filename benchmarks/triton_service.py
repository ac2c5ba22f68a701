"""The strongest peer: NVIDIA Triton (through PyTriton) with dynamic batching, serving the same model.

The bound Python function receives a batch of PNG byte strings that Triton's dynamic batcher
collected, preprocesses each the straightforward way (benchmarks/naive_recipe.py) and runs one
ONNX Runtime call for the batch. It runs in its own virtual environment (benchmarks/requirements.txt):

    python benchmarks/triton_service.py MODEL.onnx --http-port 8002

If the model load fails with a Python version mismatch, put the interpreter's lib directory
on LD_LIBRARY_PATH (benchmarks/run.py does).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.naive_recipe import naive_tensor  # noqa: E402

MODEL_NAME = "cxr"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--http-port", type=int, default=8002)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-delay-us", type=int, default=2000)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        tensors = np.concatenate([naive_tensor(bytes(row[0])) for row in image])
        (probability,) = session.run(["effusion_probability"], {"image": tensors})
        return {"effusion_probability": probability.reshape(-1, 1).astype(np.float32)}

    config = TritonConfig(http_port=args.http_port, grpc_port=args.http_port + 1, metrics_port=args.http_port + 2)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="effusion_probability", dtype=np.float32, shape=(1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_delay_us),
            ),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
