"""ScoreDistillation inside a LightningModule driven by the CarvCallback (tiny random SD parts, CPU)."""

import pytest
import torch

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from carv_adapt.guidance import ScoreDistillation  # noqa: E402
from carv_adapt.integrations.lightning import CarvCallback  # noqa: E402
from carv_adapt.teachers.sd_tiny import make_pipeline  # noqa: E402
from tests.sd_helpers import tiny_sd_parts  # noqa: E402


class ImageSDS(L.LightningModule):
    """A 16x16 'scene' rendered as N jittered views and distilled with SDS."""

    def __init__(self, sds: ScoreDistillation):
        super().__init__()
        self.scene = torch.nn.Parameter(torch.zeros(1, 1, 16, 16))
        self.sds = sds  # a plain attribute: the frozen teacher is not part of the module's parameters
        self.seen = []

    def training_step(self, batch, batch_idx):
        plan = self.carv.plan()
        g = torch.Generator().manual_seed(plan.noise_seed)
        renders = torch.tanh(self.scene + 0.1 * torch.randn(plan.N, 1, 16, 16, generator=g))
        out = self.sds(plan, images=renders, timer=self.carv.timer)
        self.carv.observe(plan, out.contributions)
        self.seen.append((plan.N, plan.K, tuple(out.contributions.shape)))
        return out.loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(64, 1), batch_size=1)


@pytest.mark.slow
def test_score_distillation_under_the_lightning_callback(tmp_path):
    pipe = make_pipeline(**tiny_sd_parts(tmp_path / "tok"))
    module = ImageSDS(ScoreDistillation.from_pipeline(pipe, "a photo of the digit three", guidance_scale=5.0))
    cb = CarvCallback(batch_size=2, t_min=20, t_max=980, warmup_steps=4, refit_every=3, seed=0)
    L.Trainer(
        max_steps=10,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    ).fit(module)
    assert cb.controller.step_count == 10 and cb.controller.history  # refits ran on the observed contributions
    assert all(shape == (n, k, 4, 8, 8) for n, k, shape in module.seen)
    assert float(module.scene.detach().abs().sum()) > 0
