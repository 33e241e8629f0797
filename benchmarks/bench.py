"""The whole benchmark (same as ``carv-adapt bench``): ECM ablation on every workload at three checkpoints,
equal-compute runs over seeds, the SDS-3D cost sweep and the controller's scaling.

    python benchmarks/bench.py [--quick] [--out bench_report]
"""

from __future__ import annotations

import sys

from carv_adapt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
