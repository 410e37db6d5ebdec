"""The training loop, one code path from a laptop CPU to many GPUs on many machines.

:mod:`accelerate` owns devices, process groups, mixed precision, gradient accumulation (gradients
are synchronised across processes on the last micro-step only) and the saving of state. This module
owns what a step means:

* batches come from :class:`gpt.data.TokenData`, keyed by (seed, step, position in the global batch),
  so the split of the global batch over processes and micro-steps does not change the result;
* AdamW on the model's two parameter groups, the global gradient norm clipped, and the learning
  rate a pure function of the step (warmup, then cosine, linear or constant decay), set before every
  step: the schedule has no state of its own to save, and a resumed run follows the config it is
  given;
* every ``eval_interval`` steps the mean train and val loss over fixed held-out windows; the best-val
  weights are kept as ``model.safetensors`` and ``early_stopping_patience`` evaluations without a new
  best end the run;
* checkpoints every ``checkpoint_interval`` steps, on SIGINT/SIGTERM and at the end; a non-finite
  loss stops the run before anything is saved from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from gpt.checkpoint import (
    WEIGHTS_FILE,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from gpt.config import Config, TrainConfig
from gpt.data import BatchSlice, TokenData
from gpt.errors import UserError
from gpt.model import build_model
from gpt.report import report_finished_run
from gpt.throughput import peak_flops

# accelerate warns at every checkpoint that it saved the tied embedding and head once; that is the
# intended behaviour (loading re-ties them), so the warning is noise.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


@dataclass
class TrainState:
    """What the loop needs beyond accelerate's state to resume; saved as trainer_state.json."""

    step: int = 0
    best_val_loss: float = math.inf
    evals_without_improvement: int = 0
    stopped_early: bool = False


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    best_val_loss: float
    stopped_early: bool
    interrupted: bool


def learning_rate(step: int, train: TrainConfig) -> float:
    """Linear warmup from 0 to ``learning_rate``, then decay to ``min_lr`` at ``decay_iters``."""
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


class MetricsLog:
    """``metrics.jsonl``: one JSON record a line, each with ``step`` and ``kind``."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop records past ``step``: a resumed run redoes those steps and logs them again."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        _write_atomically(self.path, "".join(kept))


class Trainer:
    def __init__(self, config: Config):
        self.config = config
        train = config.train
        self.data = TokenData(config.data.dir, config.model.block_size)
        self.model_config = config.model.model_copy(
            update={"vocab_size": self._vocab_size(config.model.vocab_size)}
        )
        self.out_dir = Path(train.out_dir)
        wandb_mode = train.wandb.resolved_mode()
        self.accelerator = Accelerator(
            mixed_precision=train.mixed_precision,
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            # Without an accelerator, accelerate builds a multi-process (gloo) group only when told
            # to use the CPU; otherwise `accelerate launch` would start independent processes.
            cpu=train.cpu or not torch.accelerator.is_available(),
            log_with="wandb" if wandb_mode != "disabled" else None,
            project_dir=str(self.out_dir),
        )
        self.device = self.accelerator.device
        self.peak_flops = peak_flops(self.device, train.mixed_precision)
        set_seed(train.seed)
        model = build_model(self.model_config)
        self.flops_per_token = model.flops_per_token()
        optimizer = torch.optim.AdamW(
            model.optimizer_groups(train.weight_decay),
            lr=train.learning_rate,
            betas=(train.beta1, train.beta2),
            fused=self.device.type in ("cuda", "cpu"),
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # Compile the prepared module, so saved state keeps the plain parameter names.
        self.forward = torch.compile(self.model) if train.compile else self.model
        self.state = TrainState()
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", self.accelerator.is_main_process)
        self._stop_signal: int | None = None
        self._wandb_mode = wandb_mode

    def _vocab_size(self, configured: int | None) -> int:
        if configured is None:
            return self.data.vocab_size
        if configured < self.data.vocab_size:
            raise UserError(
                f"model.vocab_size={configured} is smaller than the data's vocabulary "
                f"({self.data.vocab_size}); remove the key or raise it"
            )
        return configured

    # ----- the run -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        train = self.config.train
        self._prepare_out_dir()
        self._resume()
        self._start_tracking()
        previous_handlers = self._catch_stop_signals()
        try:
            if self.state.step == 0:
                self._evaluate()
            self._loop()
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.accelerator.end_training()
        best = self.state.best_val_loss
        self.accelerator.print(
            f"done at step {self.state.step}/{train.max_iters}; best val loss {best:.4f}; "
            f"weights in {self.out_dir / WEIGHTS_FILE}"
        )
        result = TrainResult(
            self.out_dir,
            self.state.step,
            best,
            self.state.stopped_early,
            self._stop_signal is not None,
        )
        if self.accelerator.is_main_process:  # figures and a summary in OUT_DIR/report/
            report_finished_run(
                self.out_dir,
                step=result.step,
                processes=self.accelerator.num_processes,
                tokens_per_step=self._tokens_per_step(),
                stopped_early=result.stopped_early,
                interrupted=result.interrupted,
            )
        return result

    def _loop(self) -> None:
        train = self.config.train
        progress = tqdm(
            total=train.max_iters,
            initial=self.state.step,
            disable=not self.accelerator.is_main_process,
            desc="train",
            dynamic_ncols=True,
        )
        self._interval_start, self._interval_steps = time.perf_counter(), 0
        try:
            while self.state.step < train.max_iters and not self.state.stopped_early:
                loss, grad_norm, stop_requested = self._train_step(self.state.step)
                if not math.isfinite(loss):
                    self._diverged(loss)
                self.state.step += 1
                progress.update(1)
                self._after_step(loss, grad_norm, progress, stop_requested)
                if stop_requested:
                    self.accelerator.print(
                        f"\nstopped by signal at step {self.state.step}; checkpoint saved, "
                        "run the same command again to resume"
                    )
                    break
        finally:
            progress.close()

    def _after_step(self, loss: float, grad_norm: float, progress: tqdm, stop: bool) -> None:
        """Log, evaluate and checkpoint on their intervals, and always at the end."""
        train, step = self.config.train, self.state.step
        self._interval_steps += 1
        finished = step == train.max_iters
        if step % train.log_interval == 0 or finished:
            elapsed = time.perf_counter() - self._interval_start
            tokens_per_sec = self._tokens_per_step() * self._interval_steps / elapsed
            self._log_train(step, loss, grad_norm, tokens_per_sec)
            progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_sec:,.0f}")
            self._interval_start, self._interval_steps = time.perf_counter(), 0
        if step % train.eval_interval == 0 or finished:
            self._evaluate()
        if stop or finished or self.state.stopped_early or step % train.checkpoint_interval == 0:
            state = self._trainer_state()
            save_checkpoint(self.accelerator, self.out_dir, state, train.keep_checkpoints)

    def _tokens_per_step(self) -> int:
        train = self.config.train
        processes = self.accelerator.num_processes
        sequences = train.batch_size * train.gradient_accumulation_steps * processes
        return sequences * self.model_config.block_size

    def _train_step(self, step: int) -> tuple[float, float, bool]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

        Returns the loss averaged over the global batch, the gradient norm before clipping, and
        whether any process was asked to stop (so all processes agree to stop at the same step).
        """
        train = self.config.train
        accelerator = self.accelerator
        max_norm = train.grad_clip if train.grad_clip > 0 else math.inf
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, train)
        loss_sum = torch.zeros((), device=self.device)
        grad_norm = torch.zeros((), device=self.device)
        for micro_step in range(train.gradient_accumulation_steps):
            inputs, targets = self._batch(step, micro_step)
            with accelerator.accumulate(self.model):
                _, loss = self.forward(inputs, targets)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        summary = torch.stack(
            [
                loss_sum / train.gradient_accumulation_steps,
                torch.as_tensor(grad_norm, dtype=torch.float32, device=self.device),
                torch.tensor(float(self._stop_signal is not None), device=self.device),
            ]
        )
        if accelerator.num_processes > 1:
            summary = accelerator.reduce(summary, reduction="mean")
        loss_value, grad_norm_value, stop = summary.tolist()
        return loss_value, grad_norm_value, stop > 0

    def _batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.data.train_batch(self.config.train.seed, step, self._batch_slice(micro_step))
        return self._to_device(batch)

    def _batch_slice(self, micro_step: int) -> BatchSlice:
        """This process's share of a global batch in ``micro_step``."""
        return BatchSlice.for_micro_step(
            self.config.train.batch_size,
            self.config.train.gradient_accumulation_steps,
            self.accelerator.num_processes,
            self.accelerator.process_index,
            micro_step,
        )

    def _to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in batch)
        return tuple(t.to(self.device) for t in batch)

    # ----- evaluation and early stopping ---------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Mean loss over ``eval_iters`` fixed global batches of each split.

        An evaluation batch is a global batch like a training one, split over processes and
        micro-steps the same way, so the loss is over the same windows however a run is split.
        """
        train = self.config.train
        self.model.eval()
        losses = {}
        for split in ("train", "val"):
            total = torch.zeros((), device=self.device)
            for index in range(train.eval_iters):
                for micro_step in range(train.gradient_accumulation_steps):
                    part = self._batch_slice(micro_step)
                    batch = self.data.eval_batch(split, train.seed, index, part)
                    total += self.forward(*self._to_device(batch))[1].float()
            mean = total / (train.eval_iters * train.gradient_accumulation_steps)
            losses[split] = self.accelerator.reduce(mean, reduction="mean").item()
        self.model.train()
        self._record_evaluation(losses["train"], losses["val"])

    def _record_evaluation(self, train_loss: float, val_loss: float) -> None:
        step = self.state.step
        improved = val_loss < self.state.best_val_loss
        if improved:
            self.state.best_val_loss = val_loss
            self.state.evals_without_improvement = 0
            self._save_best_weights()
        else:
            self.state.evals_without_improvement += 1
        record = {
            "step": step,
            "kind": "eval",
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": self.state.best_val_loss,
        }
        self.metrics.write(record)
        self._track({"eval/train_loss": train_loss, "eval/val_loss": val_loss}, step)
        self.accelerator.print(
            f"\nstep {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
            + (" (best)" if improved else "")
        )
        patience = self.config.train.early_stopping_patience
        if patience and self.state.evals_without_improvement >= patience:
            self.state.stopped_early = True
            self.accelerator.print(
                f"early stopping at step {step}: val loss has not improved for {patience} "
                f"evaluations (best {self.state.best_val_loss:.4f})"
            )

    def _save_best_weights(self) -> None:
        """Write the current weights as ``model.safetensors`` (gathered if sharded)."""
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            model = build_model(self.model_config)
            model.load_state_dict(state_dict)
            save_model(self.out_dir / WEIGHTS_FILE, model)

    # ----- output folder, resuming, tracking ------------------------------------------------------

    def _prepare_out_dir(self) -> None:
        if self.accelerator.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.out_dir / "config.yaml", self._resolved_config().to_yaml())
            _write_atomically(
                self.out_dir / "tokenizer.json",
                self.data.tokenizer_path.read_text(encoding="utf-8"),
            )
        self.accelerator.wait_for_everyone()

    def _resolved_config(self) -> Config:
        return self.config.model_copy(update={"model": self.model_config})

    def _resume(self) -> None:
        resume = self.config.train.resume
        if resume == "never":
            checkpoint = None
        elif resume == "auto":
            checkpoint = latest_checkpoint(self.out_dir)
        else:
            checkpoint = Path(resume)
            if not checkpoint.is_dir():
                raise UserError(
                    f"train.resume={resume}: no such checkpoint folder; use auto, never or an "
                    "existing checkpoints/step_* folder"
                )
        if checkpoint is None:
            self.metrics.keep_until(-1)
            return
        saved = load_checkpoint(self.accelerator, checkpoint, self.model_config)
        self.state = TrainState(**{k: saved[k] for k in asdict(TrainState())})
        self.metrics.keep_until(self.state.step)
        self.accelerator.print(f"resumed from {checkpoint} at step {self.state.step}")

    def _trainer_state(self) -> dict:
        return {**asdict(self.state), "model_config": self.model_config.model_dump(mode="json")}

    def _start_tracking(self) -> None:
        """W&B through accelerate's tracker; a tracker that fails to start never stops training."""
        if self._wandb_mode == "disabled":
            return
        wandb = self.config.train.wandb
        init = {
            "mode": self._wandb_mode,
            "dir": str(self.out_dir),
            "name": wandb.run_name or self.out_dir.name,
        }
        config = self._resolved_config().model_dump(mode="json")
        try:
            self.accelerator.init_trackers(
                wandb.project, config=config, init_kwargs={"wandb": init}
            )
        except Exception as error:  # W&B raises many kinds; none of them may end a training run
            self.accelerator.print(f"W&B could not start ({error}); training goes on without it")
            self.accelerator.trackers = []

    def _track(self, values: dict, step: int) -> None:
        try:
            self.accelerator.log(values, step=step)
        except Exception as error:  # same reasoning as in _start_tracking
            self.accelerator.print(f"W&B logging failed ({error}); training goes on without it")
            self.accelerator.trackers = []

    def _log_train(self, step: int, loss: float, grad_norm: float, tokens_per_sec: float) -> None:
        lr = learning_rate(step - 1, self.config.train)  # the rate the step just taken used
        record = {
            "step": step,
            "kind": "train",
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_sec": tokens_per_sec,
            "mfu": self._mfu(tokens_per_sec),
        }
        self.metrics.write(record)
        self._track({f"train/{k}": v for k, v in record.items() if k not in ("step", "kind")}, step)

    def _mfu(self, tokens_per_sec: float) -> float:
        achieved = self.flops_per_token * tokens_per_sec
        return achieved / (self.peak_flops * self.accelerator.num_processes)

    # ----- stopping ------------------------------------------------------------------------------

    def _catch_stop_signals(self) -> dict:
        """SIGINT and SIGTERM end the current step, save a checkpoint and stop cleanly."""

        def request_stop(signum, frame):
            self._stop_signal = signum

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
        return previous

    def _diverged(self, loss: float) -> None:
        checkpoint = latest_checkpoint(self.out_dir)
        kept = (
            f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        )
        raise UserError(
            f"the training loss became {loss} at step {self.state.step + 1}; stopped, and {kept}; "
            "lower train.learning_rate, raise train.warmup_iters or set train.grad_clip"
        )


def train(config: Config) -> TrainResult:
    return Trainer(config).run()


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
