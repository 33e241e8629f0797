"""The digits quality metric: the feature net's Frechet distance separates real digits from noise."""

import pytest
import torch

pytest.importorskip("diffusers")


@pytest.mark.slow
def test_distill_quality_metric_separates_real_digits_from_noise():
    from carv_adapt.teachers.tiny import digits_dataset
    from carv_adapt.workloads.digits_metrics import DigitsFeatureNet

    net = DigitsFeatureNet.train()
    x, y = digits_dataset()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    real_a, real_b = x[perm[:300]], x[perm[300:600]]
    noise = torch.rand(300, 1, 32, 32, generator=g) * 2 - 1
    from carv_adapt.workloads.digits_metrics import frechet_distance

    fd_real = frechet_distance(net.features(real_a), net.features(real_b))
    fd_noise = frechet_distance(net.features(real_a), net.features(noise))
    assert fd_noise > 20 * fd_real
    assert net.accuracy(real_b, y[perm[300:600]]) > 0.95 and net.accuracy(noise, y[perm[:300]]) < 0.3
