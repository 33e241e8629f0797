"""The split-half probe's bookkeeping: its sums reduced in column chunks (``carv_adapt.variance.split_half_sums``)
against the same sums from full-size temporaries, side by side in one run, per probe shape ``N x P``.

    python benchmarks/probe_bookkeeping.py [--reps 15] [--threads 1] [--out probe_bookkeeping.json]

Each repetition times both on fresh gradients (a probe's gradients are new every time it runs), alternating
which goes first; the table gives medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from carv_adapt.variance import split_half_sums

SHAPES = ((2, 50_000), (4, 280_000), (16, 280_000), (16, 1_000_000))


def full_size(g_a: torch.Tensor, g_b: torch.Tensor, K: int) -> list[float]:
    """The same sums with one full-size temporary per step (the form before the chunked reduction)."""
    k_a, k_b = (K + 1) // 2, K // 2
    d = (g_a - g_b).reshape(-1)
    means = torch.add(g_a, g_b, alpha=k_b / k_a).mul_(k_a / K)
    flat = means.reshape(-1)
    c = (means - means.mean(0)).reshape(-1)
    sums = torch.stack([torch.dot(d, d) / (1.0 / k_a + 1.0 / k_b), torch.dot(flat, flat), torch.dot(c, c)])
    return sums.double().tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"{'N':>3} {'P':>9} {'full-size ms':>13} {'chunked ms':>11} {'chunked / full':>15} {'max rel diff':>13}")
    for N, P in SHAPES:
        times: dict[str, list[float]] = {"full": [], "chunked": []}
        worst = 0.0
        for r in range(args.reps):
            a, b = torch.randn(N, P, generator=g), torch.randn(N, P, generator=g)
            order = ("full", "chunked") if r % 2 == 0 else ("chunked", "full")
            out = {}
            for name in order:
                t0 = time.perf_counter()
                out[name] = full_size(a, b, args.K) if name == "full" else split_half_sums(a, b, args.K)[0]
                times[name].append(time.perf_counter() - t0)
            worst = max(worst, max(abs(x - y) / abs(x) for x, y in zip(out["full"], out["chunked"])))
        full, chunked = (1e3 * statistics.median(times[k]) for k in ("full", "chunked"))
        rows.append({"N": N, "P": P, "full_ms": full, "chunked_ms": chunked, "ratio": chunked / full,
                     "max_rel_diff": worst})  # fmt: skip
        print(f"{N:>3} {P:>9} {full:13.2f} {chunked:11.2f} {chunked / full:15.2f} {worst:13.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "K": args.K, "reps": args.reps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
