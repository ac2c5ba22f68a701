"""The baseline: a FastAPI + ONNX Runtime service written the way tutorials do.

Inference runs inside `async def` (blocking the event loop), one image per `session.run`, no
batching, default ONNX Runtime session options, Pillow + numpy preprocessing. Not for use:
it is what the project's service is measured against (benchmarks/run.py).

    CXR_BENCH_MODEL=path/to/model.onnx uvicorn benchmarks.naive_service:app --port 8001
"""

from __future__ import annotations

import os

import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile

from benchmarks.naive_recipe import naive_tensor

session = ort.InferenceSession(os.environ["CXR_BENCH_MODEL"], providers=["CPUExecutionProvider"])
app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile = File(...)) -> dict[str, float]:
    tensor = naive_tensor(await file.read())
    (probability,) = session.run(["effusion_probability"], {"image": tensor})
    return {"effusion_probability": float(probability[0])}
