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
