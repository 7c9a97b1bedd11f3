"""Test-only callback: the process sends itself a signal at the start of a chosen batch, as a scheduler's kill or
a Ctrl-C would arrive in the middle of an optimizer step (used by test_run_safety through ``+callbacks.signal``)."""
import os
import signal

import lightning as L


class SendSignal(L.Callback):
    def __init__(self, signal_name: str, at_step: int, at_micro_batch: int = 0):
        self.signum, self.at_step, self.at_micro_batch = getattr(signal, signal_name), at_step, at_micro_batch
        self._sent = False

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        round_position = batch_idx % trainer.accumulate_grad_batches
        if not self._sent and trainer.global_step == self.at_step and round_position == self.at_micro_batch:
            self._sent = True
            os.kill(os.getpid(), self.signum)
