#!/usr/bin/env bash
# Pack what benchmarks/gpu_check.py needs on a lent CUDA machine (Python 3.12, no network) into
# .gpublob/part.NN pieces of 60 MiB: the onnxruntime-gpu wheel, the service's wheels missing
# there, the `hey` binary and 16 NIH scans. Carry one piece per call, back to back, then unpack
# and run (docs/performance.md, "GPU path"). Run from the repository root:
#   PYTHON=/path/to/venv/bin/python benchmarks/gpu_bundle.sh [folder of NIH PNGs]
set -euo pipefail
data=${1:-../shared/data/nih-train/effusion}
grep -qx '/.gpublob/' .git/info/exclude || echo /.gpublob/ >> .git/info/exclude
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{ort,whl,bin,img}
download() {
  "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$1" "${@:2}"
}
download "$work/ort" onnxruntime-gpu==1.31.1
# the versions of this environment (pydantic needs its exact pydantic-core)
names='isal|fastapi|starlette|pydantic|pydantic[-_]core|pydantic[-_]settings|python[-_]dotenv|python[-_]multipart|uvicorn|httptools|opentelemetry[-_]api|pydicom|onnxconverter[-_]common|typing[-_]inspection|annotated[-_]types|prometheus[-_]client'
mapfile -t pins < <("${PYTHON:-python3}" -m pip list --format=freeze | grep -i -E "^($names)==")
download "$work/whl" "${pins[@]}"
cp "$(command -v hey)" "$work/bin/"
ls "$data"/*.png | head -16 | xargs -I{} cp {} "$work/img/"
rm -rf .gpublob && mkdir .gpublob
tar -C "$work" -cf - ort whl bin img | split -b 60M -d - .gpublob/part.
ls -l .gpublob
