"""PyTorch Lightning integration: a callback that owns the controller beside the training loop.

The LightningModule asks the callback for the plan and reports what the step produced::

    class SDSModule(L.LightningModule):
        def training_step(self, batch, batch_idx):
            plan = self.carv.plan()                      # the callback sets `self.carv` at setup
            with self.carv.timer("upstream"):
                x = self.render(plan.N)
            f = sds_integrand(self.teacher, x.detach(), plan.t, plan.noise(x.shape[1:]))
            self.carv.observe(plan, f)
            return (x * (plan.weights_like(f) * f).mean(1).detach()).sum() / plan.N   # SDS surrogate

    trainer = L.Trainer(callbacks=[CarvCallback(batch_size=4, t_min=20, t_max=980)])

``step()`` runs after every training batch that asked for a plan; the controller's state goes into
Lightning checkpoints through the callback's ``state_dict`` and resumes exactly.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised only without the extra
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as e:
        raise ImportError("the Lightning callback needs lightning: pip install lightning") from e

from torch import Tensor

from carv_adapt.controller import AdaptiveController
from carv_adapt.plan import Plan

__all__ = ["CarvCallback"]


class CarvCallback(pl.Callback):
    """Owns an :class:`AdaptiveController` (built at ``setup`` with the trainer's global rank).

    Args:
        attribute: name under which the callback is attached to the LightningModule.
        **config: :class:`~carv_adapt.config.ControllerConfig` fields and controller keyword arguments.
    """

    def __init__(self, attribute: str = "carv", **config: Any) -> None:
        super().__init__()
        self.attribute = attribute
        self._config = config
        self.controller: AdaptiveController | None = None
        self._pending_state: dict[str, Any] | None = None
        self._planned = False

    @property
    def state_key(self) -> str:
        return f"CarvCallback[{self.attribute}]"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.controller is None:
            self.controller = AdaptiveController(rank=trainer.global_rank, **self._config)
        if self._pending_state is not None:
            self.controller.load_state_dict(self._pending_state)
            self._pending_state = None
        setattr(pl_module, self.attribute, self)

    # ----------------------------------------------------------------- what the module calls
    def _ctrl(self) -> AdaptiveController:
        if self.controller is None:
            raise RuntimeError("CarvCallback is not set up yet: pass it to Trainer(callbacks=[...]) before fit()")
        return self.controller

    def plan(self) -> Plan:
        plan = self._ctrl().plan()
        self._planned = True
        return plan

    def observe(self, plan: Plan, contributions: Tensor | None = None, **kwargs: Any) -> None:
        self._ctrl().observe(plan, contributions, **kwargs)

    def timer(self, stage: str, device: Any = None) -> AbstractContextManager[Any]:
        return self._ctrl().timer(stage, device)

    # ----------------------------------------------------------------- hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._planned:
            self._ctrl().step()
            self._planned = False

    def state_dict(self) -> dict[str, Any]:
        return {} if self.controller is None else self.controller.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.controller is None:
            self._pending_state = state_dict  # applied at setup, when the rank is known
        else:
            self.controller.load_state_dict(state_dict)
