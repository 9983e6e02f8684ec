#!/usr/bin/env bash
# The GPU checks, in one run of a few minutes on a CUDA machine (issue 16): the property tests
# and tests/test_gpu.py on the GPU (the scorers load in bf16 there, with the tolerances those
# tests state), then benchmarks/gpu_check.py's numbers. Usage, from the repository root:
#   benchmarks/gpu_check.sh SHAPE_DIR [OUT_DIR]
# SHAPE_DIR holds SmolLM2-135M's config.json and tokenizer files (on this machine they are in
# ~/.cache/plaudit/smollm2-135m-instruct once `make test` or `make serve` has run). Runs with the
# machine's python3, which must have torch with CUDA, transformers, peft, accelerate, pydantic,
# pyyaml, safetensors, hypothesis and pytest; plaudit is installed without its dependencies.
set -euo pipefail
repo=$(pwd)
shape=$(realpath "${1:?usage: benchmarks/gpu_check.sh SHAPE_DIR [OUT_DIR]}")
out=$(realpath -m "${2:-benchmarks/out}")
mkdir -p "$out"
python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/plaudit-site . >/dev/null
# Run from elsewhere: in the repository root its plaudit/ folder would hide the installed package.
export PYTHONPATH=/tmp/plaudit-site:$repo${PYTHONPATH:+:$PYTHONPATH} CI=true PYTHONUNBUFFERED=1
cd "$(mktemp -d)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
status=0
python3 -m pytest -q -rs -p no:cacheprovider -c "$repo/pyproject.toml" --rootdir "$repo" \
  "$repo/tests/test_gpu.py" "$repo/tests/test_properties.py" 2>&1 | tee "$out/gpu_tests.log" || status=$?
python3 -m benchmarks.gpu_check --shape "$shape" --out "$out/gpu_check.json" || status=$?
exit $status
