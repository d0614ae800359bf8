"""Run control: the divergence guard and early stopping. Small, stateful, saved in checkpoints."""
import math


class NonFiniteGuard:
    """A non-finite loss or gradient skips that optimizer update; `limit` in a row stops the run."""

    def __init__(self, limit: int):
        self.limit = limit
        self.streak = 0
        self.total = 0

    def check(self, loss_finite: bool, grad_norm: float | None) -> bool:
        """True when this update must be skipped."""
        bad = not loss_finite or (grad_norm is not None and not math.isfinite(grad_norm))
        self.streak = self.streak + 1 if bad else 0
        self.total += bad
        return bad

    @property
    def exhausted(self) -> bool:
        return bool(self.limit) and self.streak >= self.limit

    def state_dict(self) -> dict:
        return {"streak": self.streak, "total": self.total}

    def load_state_dict(self, state: dict):
        self.streak, self.total = state["streak"], state["total"]


class EarlyStopping:
    """Stop after `patience` evaluations in a row without a new best validation loss (0: never)."""

    def __init__(self, patience: int | None):
        self.patience = patience or 0
        self.bad_evals = 0

    def update(self, improved: bool) -> bool:
        """Record one evaluation; True when training should stop."""
        self.bad_evals = 0 if improved else self.bad_evals + 1
        return bool(self.patience) and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"evals_without_improvement": self.bad_evals}

    def load_state_dict(self, state: dict):
        self.bad_evals = state.get("evals_without_improvement", 0)
