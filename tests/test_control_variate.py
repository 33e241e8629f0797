"""docs/theory.md §14: control variates on the analytic teacher: unbiased under every policy with coefficients fitted
online, predicted W matches measured W, a surrogate equal to the teacher removes the within-draw noise, a wrong
declared mean is caught, a non-finite surrogate falls back to beta = 0."""

import math

import pytest
import torch

from carv_adapt import (
    AdaptiveController,
    ConfigError,
    ControlVariate,
    HierarchicalEstimator,
    check_control_variate,
    with_coefficients,
)
from carv_adapt.proposals import TargetMeasure
from carv_adapt.teachers import GaussianSurrogate, GaussianTeacher, exact_sds_expectation, sds_integrand, sds_weight

D = 4
TEACHER = GaussianTeacher(torch.tensor([0.5, -1.0, 2.0, 0.0]), std=0.7)
W_T = sds_weight(TEACHER.alphas_cumprod, "sigma2")
X_MEAN, X_SD = torch.tensor([1.0, 0.0, 0.0, -0.5], dtype=torch.float64), 0.4
# An imperfect surrogate: the wrong data mean and per-coordinate stds (its own conditional mean is still exact).
SURROGATE = GaussianSurrogate(
    TEACHER.alphas_cumprod,
    torch.tensor([[0.3, -0.8, 1.5, 0.2]]),
    torch.tensor([[0.5, 0.9, 0.7, 1.1]]),
    weight=W_T,
)
EXACT_STD = torch.full((1, D), TEACHER.std, dtype=torch.float64)
EXACT = GaussianSurrogate(TEACHER.alphas_cumprod, TEACHER.mean[None], EXACT_STD, weight=W_T)


def _draws(plan, g, cv):
    x = X_MEAN + X_SD * torch.randn(plan.N, D, generator=g, dtype=torch.float64)
    eps = plan.noise((D,), dtype=torch.float64)
    return sds_integrand(TEACHER, x, plan.t, eps, W_T), cv.evaluate(x, plan.t, eps)


def _costs(plan, c_out=0.01, c_in=0.001):
    return {"upstream": c_out * plan.N, "teacher": c_in * plan.N * plan.K}


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        dict(stratification="iid"),
        dict(stratification="stratified"),
        dict(stratification="global"),
        dict(stratification="lattice", antithetic=True),
        dict(stratification="auto", K=1, adapt_k=False),
    ],
)
def test_unbiased_under_every_policy_with_online_coefficients(settings):
    """300 adaptive steps (warm-up, proposal and K moves, coefficients refitted every step): |z| < 4 against the
    exact expectation, and the coefficients did move away from 0."""
    target = TargetMeasure(1000, 20, 980)
    G = exact_sds_expectation(TEACHER, X_MEAN, target.pmf(), W_T)
    ctrl = AdaptiveController(
        num_timesteps=1000, t_min=20, t_max=980, batch_size=2, warmup_steps=10, refit_every=10, seed=5, **settings
    )
    g = torch.Generator().manual_seed(6)
    vals = []
    for _ in range(300):
        plan = ctrl.plan()
        f, control = _draws(plan, g, SURROGATE)
        vals.append(plan.weighted_mean(plan.controlled(f, *control)))
        ctrl.observe(plan, f, control=control, costs=_costs(plan))
        ctrl.step()
    v = torch.stack(vals)
    z = (v.mean(0) - G) / (v.std(0) / math.sqrt(len(v)))
    assert float(z.abs().max()) < 4.0, z
    assert float(ctrl.control.beta().abs().max()) > 0.1


@pytest.mark.slow
def test_fitted_policy_with_control_predicts_measured_W_within_10_percent():
    """The refit's W (statistics of the controlled integrand, surrogate charged as an inner stage) against W
    measured from 3000 independent estimates under the frozen policy and coefficients."""
    c_out, c_in = 0.010, 0.001
    ctrl = AdaptiveController(
        num_timesteps=1000, t_min=20, t_max=980, num_bins=20, batch_size=4, warmup_steps=20, refit_every=10,
        stratification="iid", seed=3, forgetting=1.0,
    )  # fmt: skip
    g = torch.Generator().manual_seed(4)
    for _ in range(200):
        plan = ctrl.plan()
        f, control = _draws(plan, g, SURROGATE)
        ctrl.observe(plan, f, control=control, costs=_costs(plan, c_out, c_in))
        ctrl.step()
    ctrl.refit()
    fitted = ctrl.history[-1]
    est = HierarchicalEstimator(ctrl.proposal, N=2, K=ctrl.K, stratification="iid", seed=12)
    target = TargetMeasure(1000, 20, 980)
    G = exact_sds_expectation(TEACHER, X_MEAN, target.pmf(), W_T)
    beta_b, edges = ctrl.control.beta(), ctrl.edges
    g = torch.Generator().manual_seed(19)
    errs = []
    for _ in range(3000):
        plan = with_coefficients(est.plan(), beta_b, edges)
        f, control = _draws(plan, g, SURROGATE)
        errs.append(((plan.weighted_mean(plan.controlled(f, *control)) - G) ** 2).sum())
    err = torch.stack(errs)
    cost = 2 * (c_out + ctrl.K * c_in)
    measured, se = float(err.mean()) * cost, float(err.std()) / math.sqrt(len(err)) * cost
    # The same policy without the control, for scale: the control must have removed variance.
    uncontrolled = HierarchicalEstimator(ctrl.proposal, N=2, K=ctrl.K, stratification="iid", seed=13)
    raw = []
    for _ in range(1000):
        plan = uncontrolled.plan()
        raw.append(((plan.weighted_mean(_draws(plan, g, SURROGATE)[0]) - G) ** 2).sum())
    assert measured < 0.9 * float(torch.stack(raw).mean()) * cost
    assert se < 0.03 * measured
    assert abs(fitted.predicted_W - measured) < 0.10 * measured, (fitted.predicted_W, measured)
    assert fitted.extra["cv_beta"] == pytest.approx(beta_b.tolist())


def test_surrogate_equal_to_the_teacher_removes_the_within_variance():
    """At one timestep the controlled contribution is E[f | x, t]: identical across an outer draw's K inner draws
    from the second step on (beta = 1 exactly after one observation); the share removed is 1."""
    ctrl = AdaptiveController(num_timesteps=1000, t_min=500, t_max=500, num_bins=1, batch_size=3, K=5, adapt_k=False)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        plan = ctrl.plan()
        f, control = _draws(plan, g, EXACT)
        assert torch.allclose(f, control[0], atol=1e-12)
        fc = plan.controlled(f, *control)
        spread = float((fc - fc.mean(dim=1, keepdim=True)).abs().max())
        if step == 0:
            assert spread > 1e-3  # no evidence yet: beta = 0, the plain integrand
        else:
            assert spread < 1e-12
            assert float(plan.cv_beta.sub(1).abs().max()) < 1e-12
        ctrl.observe(plan, f, control=control, costs=_costs(plan))
        ctrl.step()
    est = ctrl.control.compute()
    assert float(est.correlation[0]) == pytest.approx(1.0, abs=1e-9)
    # All the noise goes: the variance removed per draw is E||g - mu_g||^2, the whole within-draw part.
    s = ctrl.control
    assert float(est.removed[0]) == pytest.approx(float(s.s_hh[0] / s.count[0]), rel=1e-9)


def test_check_control_variate_passes_an_exact_mean_and_fails_a_wrong_one():
    g = torch.Generator().manual_seed(1)
    x = X_MEAN + X_SD * torch.randn(3, D, generator=g, dtype=torch.float64)
    t = torch.randint(20, 980, (3, 4), generator=g)
    ok = check_control_variate(SURROGATE, x, t, samples=1024)
    assert ok.coordinates == 3 * 4 * D and ok.max_abs_z < 6.0

    class WrongMean(GaussianSurrogate):
        def conditional_mean(self, x, t, cond=None):  # forgets the data-mean term b_t
            A, _, w = self._coef(x, t, cond)
            a = self.alpha[t][..., None]
            return (w * A * a * x.double().reshape(x.shape[0], 1, -1)).reshape(*t.shape, *x.shape[1:])

    bad = WrongMean(TEACHER.alphas_cumprod, torch.tensor([[0.3, -0.8, 1.5, 0.2]]), torch.ones(1, D), weight=W_T)
    with pytest.raises(ConfigError, match="declared conditional mean is wrong"):
        check_control_variate(bad, x, t, samples=1024)


def test_non_finite_surrogate_values_are_counted_and_run_with_beta_zero():
    ctrl = AdaptiveController(num_timesteps=1000, t_min=20, t_max=980, batch_size=2, K=3, adapt_k=False)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):  # some evidence first, so beta != 0
        plan = ctrl.plan()
        f, control = _draws(plan, g, SURROGATE)
        ctrl.observe(plan, f, control=control, costs=_costs(plan))
        ctrl.step()
    plan = ctrl.plan()
    f, (sg, mu) = _draws(plan, g, SURROGATE)
    sg = sg.clone()
    sg[1, 2, 0] = float("nan")
    mu = mu.clone()
    mu[0, 1, 3] = float("inf")
    fc = plan.controlled(f, sg, mu)
    assert torch.equal(fc[1, 2], f[1, 2]) and torch.equal(fc[0, 1], f[0, 1])
    assert bool(torch.isfinite(fc).all())
    before, counts = ctrl.num_nonfinite, ctrl.control.count.clone()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        ctrl.observe(plan, f, control=(sg, mu), costs=_costs(plan))
    assert ctrl.num_nonfinite == before + 2
    assert float(ctrl.control.count.sum() - counts.sum()) == plan.N * plan.K - 2
    ctrl.step()


def test_state_dict_round_trips_the_coefficients():
    def make(**kw):
        return AdaptiveController(num_timesteps=1000, t_min=20, t_max=980, batch_size=2, warmup_steps=4, **kw)

    a = make(seed=1)
    g = torch.Generator().manual_seed(3)
    for _ in range(12):
        plan = a.plan()
        f, control = _draws(plan, g, SURROGATE)
        a.observe(plan, f, control=control, costs=_costs(plan))
        a.step()
    b = make(seed=99, num_bins=5)
    b.load_state_dict(a.state_dict())
    pa, pb = a.plan(), b.plan()
    assert torch.equal(pa.t, pb.t) and torch.equal(pa.cv_beta, pb.cv_beta)
    assert bool((pa.cv_beta != 0).any())


def test_a_state_dict_from_before_control_variates_loads():
    a = AdaptiveController(num_timesteps=100, warmup_steps=2)
    state = a.state_dict()
    del state["control"]
    b = AdaptiveController(num_timesteps=100)
    b.load_state_dict(state)
    assert float(b.control.count.sum()) == 0.0


def test_control_variate_is_a_small_extension_point():
    """One subclass with two methods is a usable control: here the plain noise, g = eps (mean 0)."""

    class Noise(ControlVariate):
        def surrogate(self, x, t, eps, cond=None):
            return eps

        def conditional_mean(self, x, t, cond=None):
            return torch.zeros(*t.shape, *x.shape[1:], dtype=x.dtype)

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, D, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (2, 3), generator=g)
    check_control_variate(Noise(), x, t, samples=256)
    with pytest.raises(Exception, match="must have eps's shape"):
        Noise().evaluate(x, t, torch.zeros(2, 3, D + 1, dtype=torch.float64))
