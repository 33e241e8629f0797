#!/usr/bin/env bash
# CUDA checks on a GPU machine: the CUDA-only tests, then the controller's scaling table on the GPU
# (time per call and peak GPU memory), then the whole suite. Writes logs to ${OUT:-gpu_check}/.
set -uo pipefail
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/device.txt"
python3 -m pytest -q -p no:cacheprovider -rs tests/core/test_cuda.py tests/core/test_stats.py 2>&1 | tee "$OUT/cuda_tests.log"
python3 - <<'PY' 2>&1 | tee "$OUT/scaling_cuda.log"
import json, os
from carv_adapt.bench.scaling import scaling_table
rows = scaling_table(bins=(10, 100, 1000), dims=(256, 65536, 1048576, 16777216), steps=20, device="cuda")
for r in rows:
    print({k: round(v, 3) for k, v in r.items()})
json.dump(rows, open(os.path.join(os.environ.get("OUT", "gpu_check"), "scaling_cuda.json"), "w"), indent=1)
PY
timeout 300 python3 -m pytest -q -x -p no:cacheprovider -n 8 tests 2>&1 | tail -25 | tee "$OUT/full_suite.log"
