"""Controller overhead: seconds per plan / observe / refit and the peak extra memory as the number of timestep
bins and the contribution dimension grow (synthetic contributions; no workload cost), printed as a table.

    python benchmarks/overhead.py [--steps 20] [--device cpu|cuda]

The same table is part of ``carv-adapt bench``; divide by your step time to get the overhead fraction.
"""

from __future__ import annotations

import argparse

from carv_adapt.bench.scaling import scaling_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"{'bins':>6} {'dim':>9} {'N':>3} {'K':>3} {'plan ms':>9} {'observe ms':>11} {'refit ms':>9} {'peak MB':>9}")
    for r in scaling_table(steps=args.steps, device=args.device):
        print(
            f"{r['bins']:>6} {r['dim']:>9} {r['N']:>3} {r['K']:>3} {r['plan_ms']:9.3f} {r['observe_ms']:11.3f} "
            f"{r['refit_ms']:9.3f} {r['peak_extra_mb']:9.1f}"
        )


if __name__ == "__main__":
    main()
