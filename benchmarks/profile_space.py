"""Output- against parameter-space timestep profile per workload (docs/theory.md §7.9).

python benchmarks/profile_space.py --out docs/bench/profile_space.json [--quick]
"""

import sys

from carv_adapt.bench.profile_space import main

if __name__ == "__main__":
    sys.exit(main())
