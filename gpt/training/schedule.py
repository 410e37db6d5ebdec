"""The learning-rate schedule: a pure function of the step and the config, with no state to save.

The trainer sets the rate of every step from it (so a resumed run follows the config it is given),
and the report draws it from a run's ``config.yaml``.
"""

from __future__ import annotations

import math

from gpt.base.config import TrainConfig


def learning_rate(step: int, train: TrainConfig) -> float:
    """The rate of step ``step`` (the first step is 0): a linear warmup from 0 to
    ``learning_rate``, then a decay to ``min_lr`` at ``decay_iters``."""
    if step < train.warmup_iters:
        return train.learning_rate * (step + 1) / (train.warmup_iters + 1)
    if train.lr_schedule == "constant":
        return train.learning_rate
    if step >= train.decay_iters:
        return train.min_lr
    progress = (step - train.warmup_iters) / max(1, train.decay_iters - train.warmup_iters)
    if train.lr_schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return train.min_lr + decay * (train.learning_rate - train.min_lr)
