"""The training loop, one code path from a laptop CPU to many GPUs on many machines.

:mod:`accelerate` owns devices, process groups, mixed precision, gradient accumulation (gradients
are synchronised across processes on the last micro-step only) and the saving of state; with
``train.fsdp`` the model is sharded by :mod:`gpt.training.sharding` instead of replicated. This module
owns what a step means:

* batches come from :class:`gpt.data.tokens.TokenData`, keyed by (seed, step, position in the global batch),
  and so do the dropout masks: the global RNG is seeded from the same key before every micro-step.
  So the split of the global batch over processes and micro-steps changes the result only where
  it changes the micro-batches, and a resumed run repeats exactly what an uninterrupted one does.
  The next micro-batch is prepared while the current one trains (:mod:`gpt.training.prefetch`);
* the optimizer of ``train.optimizer`` (:mod:`gpt.training.optim`: AdamW by default), the global gradient
  norm clipped, and the learning rate a pure function of the step (:mod:`gpt.training.schedule`: warmup,
  then cosine, linear or constant decay), set before every step: the schedule has no state of its
  own to save, and a resumed run follows the config it is given. With ``train.full_batch`` a step
  is on every window of the training split instead, as L-BFGS needs;
* every ``eval_interval`` steps the mean train and val loss over fixed held-out windows; the best-val
  weights are kept as ``model.safetensors`` and ``early_stopping_patience`` evaluations without a new
  best end the run;
* checkpoints every ``checkpoint_interval`` steps, on SIGINT/SIGTERM and at the end. A run stopped by
  a signal evaluates once more on its way out, so that its best weights hold the training done (a
  stop before the first scheduled evaluation would leave the step-0 weights). A step whose loss or
  gradient norm is not finite applies no update (:mod:`gpt.training.guard`), and the run stops at
  its next read of the device naming that step; weights are checked to be finite before anything
  is saved, so every checkpoint holds finite weights.

A step does not read the device (which would idle a GPU until the host queues more work): the host
reads the loss, gradient norm, stop request and divergence record once, in the steps that log,
evaluate or checkpoint (:meth:`Trainer._sync_due`). A signal therefore stops a multi-process run at
the next of those steps, where the processes agree on it; a single process stops after the step.

A run resumes from the newest intact checkpoint (:mod:`gpt.training.resume` sets damaged ones aside), or
starts fresh in an output folder of its own: an earlier run's files are moved to ``earlier_runs/``,
never mixed in. A process of a multi-process run that loses contact with the others stops with one
line instead of a traceback. What the run prints is :mod:`gpt.training.console`'s, and W&B is
:mod:`gpt.training.tracking`'s.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed

from gpt.base.config import Config, fit_warmup_to_run
from gpt.base.errors import UserError, one_line
from gpt.base.folder_lock import hold_folder
from gpt.data.tokenizer import tokenizer_fingerprint
from gpt.data.tokens import BatchSlice, TokenData
from gpt.interop.pretrained import load_pretrained, pretrained_model_config
from gpt.models.gpt import build_model
from gpt.models.lm import LanguageModel
from gpt.models.size import check_fits_in_memory
from gpt.run.folder import (
    RUN_FACTS_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    MetricsLog,
    latest_checkpoint,
    move_earlier_run_aside,
    tokens_per_step,
    write_failed,
    write_run_description,
    write_run_facts,
)
from gpt.run.integrity import TOKENIZER_KEY
from gpt.run.weights import save_weights
from gpt.training.agreement import on_main_process
from gpt.training.checkpoint import (
    WRITE_ERRORS,
    check_model_shape,
    check_sharding,
    load_checkpoint,
    save_checkpoint,
)
from gpt.training.console import Console, RunFacts, end_of_run, startup_block
from gpt.training.guard import DivergenceGuard
from gpt.training.launch import runs_on_cpu
from gpt.training.optim import build_optimizer, set_learning_rate
from gpt.training.pace import Interval, Pace
from gpt.training.prefetch import Prefetcher
from gpt.training.resume import resume
from gpt.training.schedule import learning_rate
from gpt.training.throughput import peak_flops, tf32_enabled, use_tf32
from gpt.training.tracking import Tracking, new_run_id

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
    best_step: int | None = None  # the step of the best val loss
    wandb_run_id: str | None = None  # the W&B run that a resumed run continues

    @classmethod
    def from_saved(cls, saved: dict) -> TrainState:
        """The state in a checkpoint's trainer_state.json (which holds more: the manifest, the
        model config). A key that checkpoints of earlier versions lack keeps its default."""
        return cls(
            **{field.name: saved[field.name] for field in fields(cls) if field.name in saved}
        )


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    best_val_loss: float
    stopped_early: bool
    stop_signal: int | None  # the SIGINT or SIGTERM that ended the run early, if one did

    @property
    def exit_code(self) -> int:
        """0, or 128 + the signal's number, as a shell reports a process the signal stopped."""
        return 128 + self.stop_signal if self.stop_signal else 0


def micro_batch_seed(seed: int, step: int, start: int) -> int:
    """The RNG seed (for dropout) of the micro-batch at ``start`` in step ``step``'s global batch."""
    return int(np.random.SeedSequence([seed, step, start]).generate_state(1, np.uint64)[0])


class Trainer:
    def __init__(self, config: Config, after_run: Callable[[Path], None] | None = None):
        """``after_run(out_dir)`` runs on the main process once the run has ended or stopped
        cleanly and its files are written (the train command writes the report there)."""
        self.after_run = after_run
        train, self._warmup_note = fit_warmup_to_run(config.train)  # a smoke run's short warmup
        self.config = config = config.model_copy(update={"train": train})
        model_config = config.model
        if train.init_from is not None:  # the pretrained weights fix the shape (gpt/pretrained.py)
            model_config = pretrained_model_config(config.model, train.init_from, config.data.dir)
        self.data = TokenData(config.data.dir, model_config.block_size, config.data.train_fraction)
        # recorded with every weights file and checkpoint, which readers check (gpt.run.integrity)
        self.tokenizer_fingerprint = tokenizer_fingerprint(self.data.tokenizer_path)
        self.model_config = model_config.model_copy(
            update={"vocab_size": self._vocab_size(model_config.vocab_size)}
        )
        self.out_dir = Path(train.out_dir)
        wandb_mode = train.wandb.resolved_mode()
        self.accelerator = Accelerator(
            mixed_precision=train.mixed_precision,
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            # Without an accelerator, accelerate builds a multi-process (gloo) group only when told
            # to use the CPU; otherwise `accelerate launch` would start independent processes.
            cpu=runs_on_cpu(train),
            log_with="wandb" if wandb_mode != "disabled" else None,
            project_dir=str(self.out_dir),
            kwargs_handlers=[
                InitProcessGroupKwargs(timeout=timedelta(minutes=train.distributed_timeout_minutes))
            ],
        )
        self.device = self.accelerator.device
        if train.full_batch and self.accelerator.num_processes > 1:
            raise UserError(
                f"train.full_batch=true (which train.optimizer=lbfgs needs) trains in one process, "
                f"not {self.accelerator.num_processes}; run train.py without accelerate launch"
            )
        # train.full_batch: the whole training split as consecutive windows, every step
        self.every_window = self.data.every_train_window() if train.full_batch else None
        self.console = Console(self.accelerator.is_main_process)
        use_tf32(train.tf32)
        self.peak_flops = peak_flops(self.device, train.mixed_precision)
        set_seed(train.seed)
        check_fits_in_memory(self.model_config)
        self.model, self.optimizer = self._prepared_model_and_optimizer()
        self.guard = DivergenceGuard(
            self.optimizer.optimizer, self.device, not self._scaler_skips_overflows
        )
        self.batches = Prefetcher(self._micro_batch, self.device)
        # Compile the prepared module, so saved state keeps the plain parameter names.
        self.forward = torch.compile(self.model) if train.compile else self.model
        self.state = TrainState()
        self.metrics = MetricsLog(self.out_dir)
        self.tracking = Tracking(
            self.accelerator, train.wandb, wandb_mode, self.out_dir, self.console.print
        )
        self._stop_signal: int | None = None

    def _prepared_model_and_optimizer(self) -> tuple[LanguageModel, torch.optim.Optimizer]:
        """The model (fresh, or ``train.init_from``'s weights, which a resume then replaces) and
        its optimizer, as accelerate prepares them, or sharded (``train.fsdp``)."""
        train = self.config.train
        pretrained = None
        if train.init_from is not None:
            pretrained = partial(load_pretrained, train.init_from, self.model_config)
        if train.fsdp:
            from gpt.training import sharding  # only here: FSDP's modules take 1.5 s to import

            model = sharding.sharded_model(
                self.accelerator, self.model_config, train.mixed_precision, pretrained
            )
        else:
            model = pretrained() if pretrained else build_model(self.model_config)
        self.flops_per_token = model.flops_per_token()
        self.num_params = model.num_params()
        optimizer = build_optimizer(model, train, self.device)
        if train.fsdp:
            return model, sharding.prepare_sharded(self.accelerator, model, optimizer)
        return self.accelerator.prepare(model, optimizer)

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
        with self._holding_out_dir():
            previous_handlers = self._catch_stop_signals()
            try:
                self._train()
                return self._finish()  # the report takes seconds: a second Ctrl-C may come here
            except KeyboardInterrupt:
                self.console.close_progress()
                self.console.print(
                    f"stopped at once by a second interrupt at step {self.state.step}; "
                    f"{self._newest_checkpoint()}: run the same command again to resume from it"
                )
                raise
            finally:
                self._release_stop_signals(previous_handlers)

    @contextmanager
    def _holding_out_dir(self) -> Iterator[None]:
        """The run owns ``train.out_dir`` for its whole life (:mod:`gpt.base.folder_lock`): the
        main process holds it, and a refusal stops every process with the same line."""
        with ExitStack() as held:
            hold = hold_folder(self.out_dir, "train.py", "train.out_dir")
            on_main_process(self.accelerator, lambda: held.enter_context(hold))
            yield

    def _train(self) -> None:
        try:
            self._start()
            if self.state.step == 0:
                self._evaluate()
            self._loop()
            # The last collective of a run is an all_gather or all_reduce; with gloo, tearing the
            # process group down right after one made a process abort at exit now and then.
            self.accelerator.wait_for_everyone()
        except RuntimeError as error:
            if not self._lost_contact(error):
                raise
            raise self._lost_contact_error(error) from None
        finally:
            self.accelerator.end_training()

    def _write_run_facts(self, interrupted: bool) -> None:
        """run.json; a failure is one warning line, for the run itself has succeeded."""
        facts = {
            "step": self.state.step,
            "processes": self.accelerator.num_processes,
            "tokens_per_step": self._tokens_per_step(),
            "stopped_early": self.state.stopped_early,
            "interrupted": interrupted,
        }
        try:
            write_run_facts(self.out_dir, facts)
        except OSError as error:
            print(f"warning: {RUN_FACTS_FILE} was not written ({one_line(error)})", file=sys.stderr)

    def _finish(self) -> TrainResult:
        """Write the report, and say how the run ended: finished, stopped early, or interrupted."""
        train, state = self.config.train, self.state
        finished = state.step >= train.max_iters or state.stopped_early
        stop_signal = self._stop_signal if not finished else None
        if self.accelerator.is_main_process:
            self._write_run_facts(interrupted=stop_signal is not None)
            if self.after_run is not None:  # the train command's report, in OUT_DIR/report/
                self.after_run(self.out_dir)
        ending, why, then = "finished", None, None
        if state.stopped_early:
            ending = "stopped early"
            why = f"val loss did not improve for {train.early_stopping_patience} evaluations"
        elif stop_signal:
            ending, why = "interrupted", signal.Signals(stop_signal).name
            then = "checkpoint saved: run the same command again to resume"
        weights = str(self.out_dir / WEIGHTS_FILE)
        self.console.print(
            end_of_run(
                ending,
                state.step,
                train.max_iters,
                state.best_val_loss,
                state.best_step,
                weights,
                why=why,
                then=then,
            )
        )
        return TrainResult(
            self.out_dir, state.step, state.best_val_loss, state.stopped_early, stop_signal
        )

    def _loop(self) -> None:
        train = self.config.train
        self.console.start_progress(train.max_iters, self.state.step)
        self.pace = Pace()
        self.guard.start(self.state.step)
        try:
            while self.state.step < train.max_iters and not self.state.stopped_early:
                with self.pace.step():
                    loss, grad_norm = self._train_step(self.state.step)
                    read_now = self._sync_due(self.state.step + 1)
                    outcome = self._read_step(loss, grad_norm) if read_now else None
                self.state.step += 1
                self.console.advance()
                if outcome is None:
                    continue
                loss_value, grad_norm_value, stop_requested = outcome
                self._after_step(loss_value, grad_norm_value, stop_requested)
                if stop_requested:  # a process that was not signalled stops as if terminated
                    self._stop_signal = self._stop_signal or signal.SIGTERM
                    break
        finally:
            self.batches.close()
            self.console.close_progress()

    def _sync_due(self, step: int) -> bool:
        """Whether ``step`` (counted from 1) ends with the host reading the device: where it
        logs, evaluates or checkpoints, at the end, and (in one process) once a signal asked it to
        stop. Across processes a stop is agreed at those reads alone, so a signal stops the run
        at the next one, not at the next step."""
        train = self.config.train
        intervals = (train.log_interval, train.eval_interval, train.checkpoint_interval)
        alone_and_stopping = self.accelerator.num_processes == 1 and self._stop_signal is not None
        due = any(step % interval == 0 for interval in intervals)
        return due or step == train.max_iters or alone_and_stopping

    def _read_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[float, float, bool]:
        """The host's one read of the device in a step (:meth:`_sync_due`): the step's loss and
        gradient norm, whether any process was asked to stop, and whether the run diverged since
        the last read, which stops it here with the step that diverged."""
        stop = torch.full((1,), float(self._stop_signal is not None), device=self.device)
        if self.accelerator.num_processes > 1:
            stop = self.accelerator.reduce(stop, reduction="sum")
        values = torch.cat([loss.float().view(1), grad_norm.float().view(1), stop])
        divergence, (loss_value, grad_norm_value, stops) = self.guard.read(values)
        if divergence is not None:
            raise self._diverged(divergence.what, divergence.step)
        return loss_value, grad_norm_value, stops > 0

    def _after_step(self, loss: float, grad_norm: float, stop: bool) -> None:
        """Log, evaluate and checkpoint on their intervals, and always at the end; a run that is
        stopping (every process agrees that it is) evaluates and checkpoints too."""
        train, step = self.config.train, self.state.step
        finished = step == train.max_iters
        if step % train.log_interval == 0 or finished:
            interval = self.pace.lap()  # evaluations and checkpoints count in its wall time only
            lr = learning_rate(step - 1, train)  # the rate the step just taken used
            self._log_train(step, loss, lr, grad_norm, interval)
            self.console.log_step(step, loss, lr, self._tokens_per_sec(interval))
        scheduled = step % train.eval_interval == 0 or finished
        if scheduled or stop:
            self._evaluate(scheduled)
        if stop or finished or self.state.stopped_early or step % train.checkpoint_interval == 0:
            self._check_weights_are_finite()
            state = self._trainer_state()
            save_checkpoint(self.accelerator, self.out_dir, state, train.keep_checkpoints)

    def _tokens_per_step(self) -> int:
        train = self.config.train
        if self.every_window is not None:
            return self.every_window[0].numel()
        return tokens_per_step(
            train.batch_size,
            train.gradient_accumulation_steps,
            self.model_config.block_size,
            self.accelerator.num_processes,
        )

    def _train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step, on a global batch or (``train.full_batch``) the whole training set.

        Returns the loss averaged over the batch (and the processes) and the gradient norm before
        clipping, on the device: nothing in a step reads the device, which a GPU would idle for.
        A step whose loss or gradient norm is not finite (the same on every process) applies no
        update, nor does any step after it (:mod:`gpt.training.guard`); the loop stops the run
        at its next read of the device (:meth:`_read_step`).
        """
        train = self.config.train
        set_learning_rate(self.optimizer, learning_rate(step, train))
        if train.full_batch:
            loss, grad_norm = self._full_batch_step(step)
        else:
            loss, grad_norm = self._global_batch_step(step)
        return loss, torch.as_tensor(grad_norm, dtype=torch.float32, device=self.device)

    def _global_batch_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A step over ``gradient_accumulation_steps`` micro-batches of this process's share of the
        global batch; returns the mean loss over every process and the (global) gradient norm."""
        train = self.config.train
        accelerator = self.accelerator
        max_norm = train.grad_clip if train.grad_clip > 0 else math.inf
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(train.gradient_accumulation_steps):
            part = self._batch_slice(micro_step)
            inputs, targets = self.batches.get(
                step * train.gradient_accumulation_steps + micro_step
            )
            torch.manual_seed(micro_batch_seed(train.seed, step, part.start))  # dropout masks
            with accelerator.accumulate(self.model):
                if train.fsdp:  # DDP's no_sync for FSDP2, which accelerate applies to DDP only
                    self.model.set_requires_gradient_sync(accelerator.sync_gradients)
                _, loss = self.forward(inputs, targets)
                accelerator.backward(loss)
                loss_sum += loss.detach()
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
                    mean_loss = self._mean_over_processes(
                        loss_sum / train.gradient_accumulation_steps
                    )
                    self.guard.update(self.optimizer, mean_loss, grad_norm)
                self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm

    def _micro_batch(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's micro-batch ``number`` of the run (step x accumulation steps +
        micro-step), as :attr:`batches` prepares it ahead."""
        step, micro_step = divmod(number, self.config.train.gradient_accumulation_steps)
        return self.data.train_batch(self.config.train.seed, step, self._batch_slice(micro_step))

    def _mean_over_processes(self, loss: torch.Tensor) -> torch.Tensor:
        """The mean of every process's ``loss``: a collective on the device, no read."""
        if self.accelerator.num_processes == 1:
            return loss
        return self.accelerator.reduce(loss, reduction="mean")

    def _full_batch_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A step on every training window (``train.full_batch``): gradient descent proper.

        ``loss_and_gradients`` runs the windows through the model ``batch_size`` at a time and
        leaves the gradient of their mean loss in ``.grad``. L-BFGS calls it itself, at the start
        of the step and at every point its line search tries, with the same dropout masks each
        time, so that it sees one function. Returns the loss and gradient norm at the start. (So
        L-BFGS has moved the weights before the trainer sees a non-finite loss; the run still stops
        at the next read, and weights that are not finite are never saved. Its line search reads
        the device many times a step: it is a method for small models on small data, not a GPU's
        hot loop.)
        """
        train = self.config.train
        max_norm = train.grad_clip if train.grad_clip > 0 else math.inf
        inputs, targets = self.every_window
        evaluations = []

        def loss_and_gradients() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.device)
            for start in range(0, len(inputs), train.batch_size):
                end = start + train.batch_size
                chunk = self._to_device((inputs[start:end], targets[start:end]))
                torch.manual_seed(micro_batch_seed(train.seed, step, start))  # dropout masks
                _, loss = self.forward(*chunk)
                share = len(chunk[0]) / len(inputs)
                self.accelerator.backward(loss * share)
                total += loss.detach() * share
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
            evaluations.append((total, grad_norm))
            return total

        if train.optimizer == "lbfgs":
            self.optimizer.step(loss_and_gradients)
            self.guard.check(*evaluations[0])
        else:
            loss_and_gradients()
            self.guard.update(self.optimizer, *evaluations[0])
        self.optimizer.zero_grad(set_to_none=True)
        return evaluations[0]

    @property
    def _scaler_skips_overflows(self) -> bool:
        """fp16's gradient scaler sees infinite gradients by design, skips the step and lowers
        its scale; only without one is a non-finite gradient norm divergence."""
        return self.accelerator.scaler is not None

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
    def _evaluate(self, scheduled: bool = True) -> None:
        """Mean loss over ``eval_iters`` batches of ``batch_size`` windows of each split on every
        process (nanoGPT's meaning; gradient accumulation plays no part).

        The windows are fixed (:meth:`BatchSlice.for_evaluation`), so runs that evaluate as many
        of them (``eval_iters x batch_size x processes``) evaluate the same ones however they are
        split. ``scheduled``: one of the ``eval_interval`` evaluations (see
        :meth:`_record_evaluation`).
        """
        train, accelerator = self.config.train, self.accelerator
        self.model.eval()
        losses = {}
        for split in ("train", "val"):
            total = torch.zeros((), device=self.device)
            for index in range(train.eval_iters):
                part = BatchSlice.for_evaluation(
                    train.batch_size,
                    train.eval_iters,
                    accelerator.num_processes,
                    accelerator.process_index,
                    index,
                )
                batch = self.data.eval_batch(split, train.seed, part)
                total += self.forward(*self._to_device(batch))[1].float()
            mean = total / train.eval_iters
            losses[split] = accelerator.reduce(mean, reduction="mean").item()
        self.model.train()
        self._record_evaluation(losses["train"], losses["val"], scheduled)

    def _record_evaluation(self, train_loss: float, val_loss: float, scheduled: bool) -> None:
        """Log an evaluation, keep the weights if it is a new best, and count toward early
        stopping the scheduled evaluations since the best. A stopping run's extra evaluation
        keeps the weights it finds best like any, but does not count toward the patience: a run
        that was only paused must not end as if it had stopped improving."""
        step = self.state.step
        improved = val_loss < self.state.best_val_loss
        if improved:
            self.state.best_val_loss, self.state.best_step = val_loss, step
            self.state.evals_without_improvement = 0
            self._save_best_weights()
        elif scheduled:
            self.state.evals_without_improvement += 1
        record = {
            "step": step,
            "kind": "eval",
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": self.state.best_val_loss,
        }
        self._write_metrics(record)
        self.tracking.log({"eval/train_loss": train_loss, "eval/val_loss": val_loss}, step)
        self.console.print(
            f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
            + (" (best)" if improved else "")
        )
        patience = self.config.train.early_stopping_patience
        if patience and self.state.evals_without_improvement >= patience:
            self.state.stopped_early = True  # the end of the run says so

    def _save_best_weights(self) -> None:
        """Write the current weights as ``model.safetensors`` (gathered if sharded), with the step
        and val loss they have, so that sampling can say which weights it uses."""
        self._check_weights_are_finite()
        if self.config.train.fsdp:
            from gpt.training.sharding import gathered_weights

            weights = gathered_weights(self.model)  # every process takes part
        else:
            weights = self.accelerator.unwrap_model(self.model).state_dict()
        on_main_process(self.accelerator, lambda: self._write_best_weights(weights))

    def _write_best_weights(self, weights: dict[str, torch.Tensor]) -> None:
        path = self.out_dir / WEIGHTS_FILE
        saved_at = {
            "step": str(self.state.step),
            "val_loss": repr(self.state.best_val_loss),
            TOKENIZER_KEY: self.tokenizer_fingerprint,
        }
        try:
            save_weights(path, weights, self.model_config, saved_at)
        except WRITE_ERRORS as error:
            raise write_failed(f"the best weights {path}", one_line(error), self.out_dir) from None

    # ----- starting: resume or a fresh output folder ----------------------------------------------

    def _start(self) -> None:
        """Resume as ``train.resume`` says, or start fresh; describe the run in its folder, start
        tracking it, and say what it is.

        Everything that could refuse the resume is checked before anything is written.
        """
        train = self.config.train
        resumed = resume(self.accelerator, train.resume, self.out_dir, self._check, self._restore)
        moved = on_main_process(self.accelerator, lambda: self._prepare_out_dir(resumed))
        # a checkpoint of an earlier version may lack the id: its W&B run cannot be continued
        self.state.wandb_run_id = self.state.wandb_run_id or new_run_id()
        config = self._resolved_config().model_dump(mode="json")
        self.tracking.start(self.state.wandb_run_id, config)
        if self.console.enabled:
            self.console.print(startup_block(self._facts(self._how_it_starts(resumed, moved))))

    def _prepare_out_dir(self, resumed: Path | None) -> Path | None:
        """Keep the metrics of a resumed run up to its checkpoint, or move an earlier run aside
        (returns where to); then describe this run in the folder."""
        moved = None
        if resumed:
            self.metrics.keep_until(self.state.step)
        else:
            moved = move_earlier_run_aside(self.out_dir)
        write_run_description(self.out_dir, self._resolved_config(), self.data.tokenizer_path)
        return moved

    def _how_it_starts(self, resumed: Path | None, moved: Path | None) -> str:
        if resumed:
            return f"resumed from {resumed} at step {self.state.step}"
        start = "fresh"
        if self.config.train.init_from:
            start += f", from the weights in {self.config.train.init_from}"
        if moved:
            start += f"; moved the earlier run in {self.out_dir} to {moved}"
        return start

    def _facts(self, start: str) -> RunFacts:
        train, accelerator = self.config.train, self.accelerator
        device = self.device.type
        if device == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        return RunFacts(
            device=device,
            processes=accelerator.num_processes,
            machines=accelerator.num_processes // local_processes,
            mixed_precision=train.mixed_precision,
            tf32=tf32_enabled() if self.device.type == "cuda" else None,
            arch=self.model_config.arch,
            parameters=self.num_params,
            batch_size=train.batch_size,
            accumulation=train.gradient_accumulation_steps,
            block_size=self.model_config.block_size,
            full_batch_windows=None if self.every_window is None else len(self.every_window[0]),
            data_dir=str(self.data.dir),
            data_tokens=self.data.meta["tokens"],
            train_fraction=self.config.data.train_fraction,
            train_tokens=self.data.train_tokens,
            out_dir=str(self.out_dir),
            start=start,
            warmup_note=self._warmup_note,
            wandb=self.tracking.where(),
        )

    def _check(self, checkpoint: Path) -> None:
        """Refuse a checkpoint of another model shape, tokenizer or sharding (a UserError)."""
        check_model_shape(checkpoint, self.model_config)
        check_sharding(checkpoint, self.config.train.fsdp)
        self._check_same_tokenizer(checkpoint.parent.parent / TOKENIZER_FILE)

    def _restore(self, checkpoint: Path) -> None:
        self.state = TrainState.from_saved(load_checkpoint(self.accelerator, checkpoint))

    def _check_same_tokenizer(self, trained_with: Path) -> None:
        """The same vocabulary size with another tokenizer would train on ids meaning other text."""
        data_tokenizer = self.data.tokenizer_path
        if not trained_with.is_file():
            return
        if tokenizer_fingerprint(trained_with) != self.tokenizer_fingerprint:
            raise UserError(
                f"the data's tokenizer {data_tokenizer} differs from {trained_with}, the one this "
                "run was trained with; resume on the data it was trained on (or on data prepared "
                f"with --tokenizer {trained_with}), or start a new run with train.resume=never or "
                "another train.out_dir"
            )

    def _resolved_config(self) -> Config:
        return self.config.model_copy(update={"model": self.model_config})

    def _trainer_state(self) -> dict:
        return {
            **asdict(self.state),
            "model_config": self.model_config.model_dump(mode="json"),
            TOKENIZER_KEY: self.tokenizer_fingerprint,
        }

    def _write_metrics(self, record: dict) -> None:
        """One record into metrics.jsonl, by the main process; every process stops if it fails."""
        on_main_process(self.accelerator, lambda: self.metrics.write(record))

    # ----- metrics -------------------------------------------------------------------------------

    def _log_train(
        self, step: int, loss: float, lr: float, grad_norm: float, interval: Interval
    ) -> None:
        """A train record: tokens/s and MFU over the steps' own time, and the wall time since
        the previous record apart (:mod:`gpt.training.pace`)."""
        tokens_per_sec = self._tokens_per_sec(interval)
        record = {
            "step": step,
            "kind": "train",
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_sec": tokens_per_sec,
            "mfu": self._mfu(tokens_per_sec),
            "wall_seconds": interval.wall_seconds,
        }
        self._write_metrics(record)
        values = {f"train/{k}": v for k, v in record.items() if k not in ("step", "kind")}
        self.tracking.log(values, step)

    def _tokens_per_sec(self, interval: Interval) -> float:
        return self._tokens_per_step() * interval.steps / interval.training_seconds

    def _mfu(self, tokens_per_sec: float) -> float:
        achieved = self.flops_per_token * tokens_per_sec
        return achieved / (self.peak_flops * self.accelerator.num_processes)

    # ----- stopping ------------------------------------------------------------------------------

    def _catch_stop_signals(self) -> dict:
        """The first SIGINT or SIGTERM ends the current step, saves a checkpoint and stops.

        A second one of the same kind gets the handler from before this run: Python's, so a second
        Ctrl-C raises KeyboardInterrupt and a second SIGTERM ends the process, at once.
        """
        previous = {}

        def request_stop(signum, frame):
            self._stop_signal = signum
            signal.signal(signum, previous[signum])

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop) or signal.SIG_DFL
        return previous

    def _release_stop_signals(self, previous: dict) -> None:
        """Give the stop signals back to the handlers from before the run; a process of a
        multi-process run ignores them from now on instead. It is ending, and the launcher SIGTERMs
        every process as soon as one has exited: one that is still to print why it stopped (the
        others, say, lost contact) must not die of that signal before its line."""
        several = self.accelerator.num_processes > 1
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if several else handler)

    def _check_weights_are_finite(self) -> None:
        """Defence in depth before any save: an update can overflow finite gradients (an absurd
        learning rate, say) into infinite weights, which must never be saved."""
        non_finite = sum(
            (~torch.isfinite(_local(p.detach())).all()).float() for p in self.model.parameters()
        )
        if self.accelerator.reduce(non_finite, reduction="sum").item() > 0:
            raise self._diverged("the update made the weights non-finite", self.state.step)

    def _diverged(self, what: str, step: int) -> UserError:
        return UserError(
            f"training diverged at step {step}: {what}; stopped before saving anything from it; "
            f"{self._newest_checkpoint()}, with finite weights; lower train.learning_rate, raise "
            "train.warmup_iters or set train.grad_clip"
        )

    def _newest_checkpoint(self) -> str:
        newest = latest_checkpoint(self.out_dir)
        return (
            f"the newest complete checkpoint is {newest}" if newest else "no checkpoint was saved"
        )

    def _lost_contact(self, error: RuntimeError) -> bool:
        """Whether ``error`` says another process is gone. NCCL raises DistBackendError (a
        DistError); gloo raises a plain RuntimeError that names its own source files."""
        distributed = isinstance(error, torch.distributed.DistError) or "gloo" in str(error)
        return self.accelerator.num_processes > 1 and distributed

    def _lost_contact_error(self, error: RuntimeError) -> UserError:
        accelerator = self.accelerator
        reason = one_line(error)
        return UserError(
            f"rank {accelerator.process_index} of {accelerator.num_processes} lost contact with "
            f"the other processes at step {self.state.step + 1} ({reason}); another process died "
            f"or its machine is unreachable (see its log); {self._newest_checkpoint()}: run the "
            "same command again on every machine to resume"
        )


def train(config: Config, after_run: Callable[[Path], None] | None = None) -> TrainResult:
    return Trainer(config, after_run).run()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a parameter that FSDP shards, else the parameter itself.

    DTensor's module costs half a second to import (it pulls in sympy), and a parameter can only
    be a DTensor once FSDP has imported that module: every other run is spared the import."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return tensor.to_local() if dtensor and isinstance(tensor, dtensor.DTensor) else tensor
