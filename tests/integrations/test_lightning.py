"""The Lightning callback: a tiny CPU Trainer run, and exact resume from a Lightning checkpoint."""

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")

from carv_adapt.integrations.lightning import CarvCallback  # noqa: E402

CFG = dict(num_timesteps=100, num_bins=5, batch_size=3, warmup_steps=4, refit_every=3, seed=11)


class Toy(L.LightningModule):
    """Outer draw x = theta + noise (the 'render'); f = x - target + s(t) eps (an SDS-like residual)."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(6))
        self.plans = []

    def training_step(self, batch, batch_idx):
        plan = self.carv.plan()
        self.plans.append((plan.K, plan.t.clone(), plan.noise_seed))
        g = torch.Generator().manual_seed(plan.noise_seed + 1)
        # Wall-clock timings differ between runs; only a fixed-cost stage is timed so decisions stay reproducible.
        with self.carv.timer("overhead"):
            x = self.theta + 0.3 * torch.randn(plan.N, 6, generator=g)
        s = 0.2 + plan.t.double() / 50
        f = (x.detach() - 1.0)[:, None, :].double() + s[..., None] * plan.noise((6,), dtype=torch.float64)
        self.carv.observe(plan, f, costs={"upstream": 1e-2 * plan.N, "teacher": 1e-3 * plan.N * plan.K})
        grad = (plan.weights_like(f) * f).mean(1).float()
        return (x * grad.detach()).sum() / plan.N

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(64, 1), batch_size=1)


def _trainer(tmp_path, steps, **kw):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kw,
    )


def test_trainer_run_and_exact_resume(tmp_path):
    full = Toy()
    cb = CarvCallback(**CFG)
    _trainer(tmp_path / "a", 20, callbacks=[cb], enable_checkpointing=False).fit(full)
    assert cb.controller.step_count == 20 and cb.controller.history

    first = Toy()
    ck = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=10)
    _trainer(tmp_path / "b", 10, callbacks=[CarvCallback(**CFG), ck]).fit(first)
    resumed = Toy()
    resumed.load_state_dict(first.state_dict())
    cb2 = CarvCallback(**CFG)
    _trainer(tmp_path / "c", 20, callbacks=[cb2], enable_checkpointing=False).fit(
        resumed, ckpt_path=str(tmp_path / "ck" / "last.ckpt")
    )
    assert cb2.controller.step_count == 20
    tail = full.plans[10:]
    assert len(resumed.plans) == len(tail)
    for (k1, t1, s1), (k2, t2, s2) in zip(tail, resumed.plans):
        assert k1 == k2 and s1 == s2 and torch.equal(t1, t2)


class ToyParam(Toy):
    """The same loop in parameter space: the 'render' is x = theta + noise, so a contribution's parameter gradient
    is itself and the split-half probe is the two half means."""

    def training_step(self, batch, batch_idx):
        plan = self.carv.plan()
        g = torch.Generator().manual_seed(plan.noise_seed + 1)
        x = self.theta + 0.3 * torch.randn(plan.N, 6, generator=g)
        s = 0.2 + plan.t.double() / 50
        f = (x.detach() - 1.0)[:, None, :].double() + s[..., None] * plan.noise((6,), dtype=torch.float64)
        wf = (plan.weights_like(f) * f).float()
        probe = (wf[:, 0::2].mean(1), wf[:, 1::2].mean(1)) if plan.K >= 2 else None
        self.carv.observe(plan, f, costs={"upstream": 1e-2 * plan.N, "teacher": 1e-3 * plan.N * plan.K}, probe=probe)
        self.last_estimate = wf.mean(dim=(0, 1))
        return (x * wf.mean(1).detach()).sum() / plan.N


def test_step_gradients_reach_the_controller_after_the_backward(tmp_path):
    """With step_gradients=True the module's observe waits for the backward: the controller gets the gradient the
    optimizer applies (here exactly the estimate), and its decisions read sigma_B^2 from the steps."""
    module, cb = ToyParam(), CarvCallback(step_gradients=True, space="parameter", **CFG)
    _trainer(tmp_path, 30, callbacks=[cb], enable_checkpointing=False).fit(module)
    ctrl = cb.controller
    assert ctrl.step_count == 30 and ctrl.statistics().steps
    assert "step gradients" in ctrl.history[-1].reason
    torch.testing.assert_close(ctrl.steps._prev, module.last_estimate)


def test_step_gradients_are_skipped_with_accumulation(tmp_path):
    cb = CarvCallback(step_gradients=True, space="parameter", **CFG)
    with pytest.warns(RuntimeWarning, match="accumulation"):
        _trainer(tmp_path, 8, callbacks=[cb], enable_checkpointing=False, accumulate_grad_batches=2).fit(ToyParam())
    assert cb.controller.step_count == 16 and not cb.controller.statistics().steps  # every batch still observed
