"""TrainState: everything a resumed run needs, in one record, with a state_dict round trip.

state_dict() is what every process shares -- trainer_state.json of a checkpoint (its keys are the
checkpoint format, version 1: checkpoints written before this module existed resume too).
rank_state_dict() is what differs per process and goes into rng_state.pt: the random generators (the
global ones, the text-dropout one, the data order at the start of the epoch) and the log window.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from musicgen_lora.training.guards import EarlyStopping, NonFiniteGuard


@dataclass
class Window:
    """What the next `train` record averages: the micro-batches since the last one (this process)."""

    loss: float = 0.0  # sum of finite micro-batch losses
    micro: int = 0     # how many of them
    tokens: int = 0
    samples: int = 0
    started: float = field(default_factory=time.time)

    def add(self, loss: float | None, tokens: int, samples: int):
        if loss is not None:
            self.loss += loss
            self.micro += 1
        self.tokens += tokens
        self.samples += samples

    def state_dict(self) -> dict:
        return {"loss": self.loss, "micro": self.micro, "tokens": self.tokens, "samples": self.samples,
                "elapsed": time.time() - self.started}

    @classmethod
    def from_state_dict(cls, d: dict) -> Window:
        return cls(d["loss"], d["micro"], d["tokens"], d["samples"], time.time() - d["elapsed"])


@dataclass
class TrainState:
    guard: NonFiniteGuard
    stopper: EarlyStopping
    text_rng: torch.Generator          # draws which descriptions text dropout blanks
    step: int = 0                      # optimizer steps taken
    epoch: int = 1
    batches_in_epoch: int = 0          # micro-batches of this epoch consumed (a resume skips them)
    base_loss: float | None = None     # step-0 validation loss (the adapter still zero)
    best: dict = field(default_factory=lambda: {"loss": None, "step": 0, "saved": False})
    last_eval: dict | None = None      # the latest evaluate_loss result
    last_eval_step: int = 0
    evals_done: int = 0
    stop_reason: str | None = None     # None, "early_stopping" or "non-finite"
    started: float = field(default_factory=time.time)  # wall clock minus the time of earlier sessions
    window: Window = field(default_factory=Window)
    epoch_start_data_rng: torch.Tensor | None = None   # the data-order generator when this epoch began
    # Within one optimizer step only (never at a checkpoint, which follows a step): each micro-batch's
    # (loss on the device, tokens, samples), brought to the host once, at the accumulation boundary
    pending: list = field(default_factory=list)
    grad_norm: float | None = None

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    def finished(self, total_steps: int) -> bool:
        return self.step >= total_steps or self.stop_reason is not None

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "base_valid_loss": self.base_loss, "best": dict(self.best), "last_eval": self.last_eval,
                "last_eval_step": self.last_eval_step, "stop_reason": self.stop_reason,
                "evals_done": self.evals_done, "elapsed_seconds": self.elapsed,
                "nonfinite": self.guard.state_dict(), **self.stopper.state_dict()}

    def rank_state_dict(self) -> dict:
        return {"window": self.window.state_dict(), "text_dropout_rng": self.text_rng.get_state(),
                "epoch_start_data_order_rng": self.epoch_start_data_rng}

    def load_state_dict(self, shared: dict, rank: dict):
        """Restore from a checkpoint's trainer_state.json (`shared`) and this process's part of
        rng_state.pt (`rank`; its global RNG states are restored by checkpointing.restore_rng_state)."""
        self.step, self.epoch, self.batches_in_epoch = shared["step"], shared["epoch"], shared["batches_in_epoch"]
        self.base_loss, self.best = shared["base_valid_loss"], dict(shared["best"])
        self.last_eval, self.last_eval_step = shared["last_eval"], shared["last_eval_step"]
        self.stop_reason, self.evals_done = shared["stop_reason"], shared.get("evals_done", 0)
        self.started = time.time() - shared["elapsed_seconds"]
        self.guard.load_state_dict(shared["nonfinite"])
        self.stopper.load_state_dict(shared)
        self.window = Window.from_state_dict(rank["window"])
        self.text_rng.set_state(rank["text_dropout_rng"])
        self.epoch_start_data_rng = rank["epoch_start_data_order_rng"]
