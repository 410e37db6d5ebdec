"""Weights & Biases, through accelerate's tracker: one W&B run per training run, resumes included.

* A run's W&B id is made when the run starts fresh and kept in its checkpoints (the trainer state),
  so a resumed run continues the same W&B run (``resume="allow"``) instead of starting a second
  one. Offline, each part of the run writes its own ``offline-run-*`` folder with that id, and
  ``wandb sync`` of all of them uploads one run.
* W&B's own console output is silenced: its hints (``wandb online``, which does not switch this
  trainer's mode) do not apply here. The start-up block says instead where the run goes and how to
  stream or upload it (:meth:`Tracking.where`).
* W&B never stops training: a tracker that fails to start or to log is dropped, with one line.
  Without a network W&B would retry its start for 90 s, its default; it gets INIT_TIMEOUT_SECONDS
  unless W&B's own ``WANDB_INIT_TIMEOUT`` says otherwise.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator

from gpt.base.config import WandbConfig
from gpt.base.errors import one_line

INIT_TIMEOUT_SECONDS = 15.0


def new_run_id() -> str:
    """A W&B run id: 8 characters of lowercase hex, like W&B's own."""
    return secrets.token_hex(4)


class Tracking:
    def __init__(
        self,
        accelerator: Accelerator,
        config: WandbConfig,
        mode: str,
        out_dir: Path,
        say: Callable[[str], None],
    ):
        self.accelerator = accelerator
        self.config = config
        self.mode = mode  # disabled | offline | online
        self.out_dir = out_dir
        self.say = say
        self.started = False

    def start(self, run_id: str, run_config: dict) -> None:
        """Start the W&B run ``run_id``, or continue it if it exists (a resumed training run)."""
        if self.mode == "disabled":
            return
        settings: dict = {"silent": True}
        if "WANDB_INIT_TIMEOUT" not in os.environ:
            settings["init_timeout"] = INIT_TIMEOUT_SECONDS
        init = {
            "id": run_id,
            "resume": "allow",
            "mode": self.mode,
            "dir": str(self.out_dir),
            "name": self.config.run_name or self.out_dir.name,
            "settings": settings,
        }
        try:
            import wandb

            # silent from the start: the run's settings come too late for the login notice
            wandb.setup(settings=wandb.Settings(silent=True))
            self.accelerator.init_trackers(
                self.config.project, config=run_config, init_kwargs={"wandb": init}
            )
        except Exception as error:  # W&B raises many kinds; none of them may end a training run
            self._drop(f"W&B could not start ({one_line(error)}); training goes on without it")
            return
        self.started = True

    def where(self) -> str:
        """Where the run's figures go, and how to change that (on the main process)."""
        if self.mode == "disabled":
            return "off (train.wandb.mode=disabled)"
        if not self.started:
            return "not started (see above); metrics.jsonl has every figure"
        run = self.accelerator.get_tracker("wandb", unwrap=True)
        if self.mode == "online":
            return f"online run {run.url}"
        return (
            f"offline run {run.id} in {run.settings.sync_dir}; set train.wandb.mode=online to "
            f"stream, or upload later with `wandb login`, then "
            f"`wandb sync {self.out_dir / 'wandb' / 'offline-run-*'}`"
        )

    def log(self, values: dict, step: int) -> None:
        try:
            self.accelerator.log(values, step=step)
        except Exception as error:  # as in start
            self._drop(f"W&B logging failed ({one_line(error)}); training goes on without it")

    def _drop(self, message: str) -> None:
        self.say(message)
        self.accelerator.trackers = []
        self.started = False
