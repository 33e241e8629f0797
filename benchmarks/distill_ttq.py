"""Distillation at equal compute on the cost clock (baseline, adaptive-variance, adaptive-progress).

python benchmarks/distill_ttq.py --out docs/bench/distill_ttq.json [--steps 150] [--seeds 5] [--quick]
"""

import sys

from carv_adapt.bench.distill_ttq import main

if __name__ == "__main__":
    sys.exit(main())
