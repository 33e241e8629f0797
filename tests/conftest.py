import pytest
import torch

from carv_adapt import AdaptiveController
from carv_adapt.fit import JsonlRefitLog
from carv_adapt.workloads import SyntheticNested

# One intra-op thread: on 2 shared cores, OpenMP threads of two busy processes spin against each other and
# slow small-batch models down 100x; the suite is many small calls, so one thread is also the fastest.
torch.set_num_threads(1)
# Helpers shared by several modules live in tests/helpers.py (import them as ``from tests.helpers import ...``).


@pytest.fixture(scope="session")
def log_path(tmp_path_factory):
    """A refit log (JSONL) of a controller run on the synthetic workload: 80 steps, refits from step 20 on."""
    path = tmp_path_factory.mktemp("log") / "refits.jsonl"
    c = AdaptiveController(
        num_timesteps=200,
        num_bins=10,
        batch_size=8,
        warmup_steps=20,
        refit_every=10,
        logger=JsonlRefitLog(path),
        seed=0,
    )
    wl = SyntheticNested(c.target, c.edges, 0.3 + 3 * torch.linspace(0, 1, 10, dtype=torch.float64) ** 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        p = c.plan()
        c.observe(p, wl.contributions(p, g), costs=wl.costs(p))
        c.step()
    return path
