"""What a training run does when it is told to stop, when its loss stops being a number, and when it ends.

- **SIGTERM / SIGINT** (a scheduler's kill, Ctrl-C): the signal only sets a flag; at the end of the current
  optimizer step (never inside a gradient-accumulation round) every rank agrees to stop, ``checkpoints/last.ckpt``
  is written, and the process exits with 128 + the signal number (143 / 130, as a shell reports a killed job).
  The same signal a second time stops at once. ``ckpt_path=<run dir>`` resumes bit for bit where it stopped.
  Under SLURM with auto-requeue Lightning's own handlers stay in charge (SIGUSR1: checkpoint and requeue).
- **A non-finite loss** stops the run with one line naming the first bad step, its loss and its learning rate
  (exit non-zero); no checkpoint and no network are written from that state, so the last good ``last.ckpt`` stays.
  The check reads the step losses that the module keeps on the device at the steps where something is logged or
  saved, so it costs no host sync per step. EDM's ``nan_to_num`` of the gradients still handles isolated bad
  gradients.
- **At the end**, ``last.ckpt`` is written before any other end-of-run callback (the final report's sampling and
  scoring), so a failing or killed report never costs trained steps.
"""
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingDiverged(ValueError):
    """The loss became non-finite; the message names the step, the loss and the learning rate."""


class Interrupted(SystemExit):
    """A stop signal was honoured: the checkpoint is written; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum, self.message = signum, message


class RunGuard(L.Callback):
    """See the module docstring. ``checkpoint_dir`` is where ``last.ckpt`` goes when no ``ModelCheckpoint``
    callback says otherwise."""

    def __init__(self, checkpoint_dir: str | Path):
        self.checkpoint_dir = Path(checkpoint_dir)
        self._signal = None
        self._previous = {}

    # --- signals -----------------------------------------------------------------------------------------------

    def _handle(self, signum, frame):
        if self._signal is not None:
            raise Interrupted(signum, f"{signal.Signals(signum).name} received twice: stopped at once")
        self._signal = signum
        print(f"{signal.Signals(signum).name} received: stopping after this optimizer step and saving "
              f"{self.last_path(None)} (send it again to stop at once)", file=sys.stderr, flush=True)

    def _install(self, trainer):
        env = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(env, SLURMEnvironment) and env.auto_requeue
        for signum in STOP_SIGNALS:
            if signum == signal.SIGTERM and slurm_requeue:
                continue
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (a launcher's worker): leave the handlers as they are
                pass

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _agreed_stop(self, trainer) -> bool:
        stop = self._signal is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        return stop

    # --- checkpoints -------------------------------------------------------------------------------------------

    def _checkpoint_callback(self, trainer) -> ModelCheckpoint | None:
        return next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.save_last),
                    None)

    def last_path(self, trainer) -> Path:
        callback = self._checkpoint_callback(trainer) if trainer is not None else None
        directory = Path(callback.dirpath) if callback is not None and callback.dirpath else self.checkpoint_dir
        return directory / "last.ckpt"

    def save_last(self, trainer) -> Path:
        """``last.ckpt`` of the current step, through the ModelCheckpoint callback when there is one (so that its
        own record of what it saved stays true and it does not save the same step again at the end)."""
        callback = self._checkpoint_callback(trainer)
        if callback is not None and getattr(callback, "_last_global_step_saved", None) == trainer.global_step \
                and Path(callback.last_model_path or "").name == "last.ckpt":
            return Path(callback.last_model_path)
        if callback is not None and hasattr(callback, "_save_last_checkpoint"):  # Lightning 2.x
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
            return Path(callback.last_model_path)
        path = self.last_path(trainer)
        trainer.save_checkpoint(path)
        return path

    # --- non-finite loss ---------------------------------------------------------------------------------------

    def check_finite(self, trainer, module) -> None:
        bad = module.first_nonfinite_step()
        stop = bad is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        kept = self.last_path(trainer)
        kept = f"the last good checkpoint {kept} is kept" if kept.is_file() else "no checkpoint was written yet"
        where = (f"the loss is {bad[1]} at step {bad[0]} (lr {module.learning_rate(bad[0] * module.batch_size):.3g})"
                 if bad is not None else "another rank's loss is not finite")
        raise TrainingDiverged(f"training diverged: {where}; stopped, nothing saved from this state and {kept}. "
                               f"Lower optim.lr (now {module.hparams.optim.get('lr')}) or raise "
                               f"optim.lr_rampup_kimg, then start again or resume from that checkpoint")

    def _due(self, trainer) -> bool:
        step = trainer.global_step
        callback = self._checkpoint_callback(trainer)
        every = getattr(callback, "_every_n_train_steps", 0) if callback is not None else 0
        return (step % max(trainer.log_every_n_steps, 1) == 0 or (every and step % every == 0)
                or step >= trainer.max_steps)

    # --- hooks -------------------------------------------------------------------------------------------------

    def on_train_start(self, trainer, module):
        self._signal = None
        self._install(trainer)
        if trainer.global_step > 0 and trainer.is_global_zero:  # resumed: the CSV log continues from this step
            for logger in trainer.loggers:
                if hasattr(logger, "resume_at"):
                    logger.resume_at(trainer.global_step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # inside an accumulation round: the optimizer has not stepped yet
        stopping = self._agreed_stop(trainer)
        if stopping or self._due(trainer):
            self.check_finite(trainer, module)
        if stopping:
            signum = self._signal or signal.SIGTERM
            path = self.save_last(trainer)
            self._restore()
            message = (f"{signal.Signals(signum).name}: stopped at step {trainer.global_step} "
                       f"({module.cur_nimg / 1000:g} kimg), saved {path}; resume with ckpt_path={path}")
            if trainer.is_global_zero:
                print(message, file=sys.stderr, flush=True)
            raise Interrupted(signum, message)

    def on_train_end(self, trainer, module):
        """Runs before every other callback's ``on_train_end`` (the guard is the first callback)."""
        self._restore()
        self.check_finite(trainer, module)
        self.save_last(trainer)

    def on_exception(self, trainer, module, exception):
        self._restore()


def guarded_first(callbacks: list) -> list:
    """``callbacks`` with the guard first, so that its ``on_train_end`` checkpoint precedes the final report."""
    guards = [c for c in callbacks if isinstance(c, RunGuard)]
    return guards + [c for c in callbacks if not isinstance(c, RunGuard)]


def weights_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())
