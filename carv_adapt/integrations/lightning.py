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
Lightning checkpoints through the callback's ``state_dict`` and resumes exactly. With ``step_gradients=True`` the
callback holds the module's ``observe`` until the backward has run and hands the controller the gradient the
optimizer is about to apply (``observe(..., grad=)``, docs/theory.md §7.8): the module's loss must then be exactly
the estimate's surrogate (no other terms), on one process, without gradient accumulation; otherwise the step is
observed without it and a warning says why, once.
"""

from __future__ import annotations

import warnings
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
from carv_adapt.probe import flat_gradient

__all__ = ["CarvCallback"]


class CarvCallback(pl.Callback):
    """Owns an :class:`AdaptiveController` (built at ``setup`` with the trainer's global rank).

    Args:
        attribute: name under which the callback is attached to the LightningModule.
        step_gradients: hand the controller each step's gradient (see the module docstring).
        **config: :class:`~carv_adapt.config.ControllerConfig` fields and controller keyword arguments.
    """

    def __init__(self, attribute: str = "carv", step_gradients: bool = False, **config: Any) -> None:
        super().__init__()
        self.attribute = attribute
        self.step_gradients = step_gradients
        self._config = config
        self.controller: AdaptiveController | None = None
        self._pending_state: dict[str, Any] | None = None
        self._planned = False
        self._held: tuple[Plan, Tensor | None, dict[str, Any]] | None = None  # an observe waiting for its gradient
        self._warned = False

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
        if self.step_gradients:
            self._held = (plan, contributions, kwargs)
        else:
            self._ctrl().observe(plan, contributions, **kwargs)

    def _release(self, grad: Tensor | None) -> None:
        if self._held is not None:
            plan, contributions, kwargs = self._held
            self._held = None
            self._ctrl().observe(plan, contributions, **kwargs, **({} if grad is None else {"grad": grad}))

    def _skip_gradient(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"CarvCallback(step_gradients=True): {why}; steps are observed without their gradient",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
        self._release(None)

    def timer(self, stage: str, device: Any = None) -> AbstractContextManager[Any]:
        return self._ctrl().timer(stage, device)

    # ----------------------------------------------------------------- hooks
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._held is None:
            return
        if trainer.world_size > 1:
            # The gradient is already averaged over ranks: every rank would add the same one (docs/theory.md §7.8).
            return self._skip_gradient("under several processes the gradient is averaged over ranks")
        if trainer.accumulate_grad_batches != 1:
            return self._skip_gradient("with gradient accumulation one gradient spans several plans")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._release(flat_gradient(params))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._release(None)  # a batch whose optimizer step did not run (skipped, accumulating): no gradient
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
