"""RefitLogger: scalars and histograms to a callable or a TensorBoard SummaryWriter."""

import pytest
import torch

from carv_adapt import AdaptiveController
from carv_adapt.integrations import RefitLogger
from tests.helpers import SMALL_CONTROLLER as KW
from tests.helpers import run_with as _run


def test_refit_logger_writes_scalars_and_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    seen = []
    ctrl = AdaptiveController(**KW, batch_size=3, logger=RefitLogger(lambda tag, v, s: seen.append((tag, s))))
    g = torch.Generator().manual_seed(0)
    _run(ctrl, lambda p: torch.randn(p.N, p.K, 3, generator=g))
    assert ("carv/K", ctrl.history[0].step) in seen and ("carv/predicted_ecm", ctrl.history[-1].step) in seen
    with SummaryWriter(tmp_path) as w:
        ctrl2 = AdaptiveController(**KW, batch_size=3, logger=RefitLogger(w))
        _run(ctrl2, lambda p: torch.randn(p.N, p.K, 3, generator=g))
    assert any(f.name.startswith("events.out.tfevents") and f.stat().st_size > 0 for f in tmp_path.iterdir())
