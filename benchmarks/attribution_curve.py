"""Attribution: Spearman against the reference as a function of teacher evaluations, per policy, with and without
common random numbers; prints the table and writes docs/bench/attribution_curve.json and .png.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/attribution_curve.py [--quick] [--out docs/bench]

About 15 minutes of one CPU thread (3 seeds, 35 examples, 64 teacher evaluations per example).
"""

from __future__ import annotations

import sys

from carv_adapt.bench.attribution_curve import main

if __name__ == "__main__":
    sys.exit(main())
