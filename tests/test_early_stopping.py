"""keras_vae.early_stopping: which epoch is kept, when training stops, what is restored."""

import math

import numpy as np

from keras_vae.early_stopping import train_keeping_best


class Box:
    """A stand-in variable."""

    def __init__(self, value):
        self.value = np.asarray(value, np.float32)

    def numpy(self):
        return self.value.copy()

    def assign(self, value):
        self.value = np.asarray(value, np.float32)


def scripted(losses):
    """A variable set to the epoch's number by each epoch, and held-out losses read from `losses` in turn."""
    box, epoch = Box(0.0), iter(range(1, len(losses) + 1))
    held = iter(losses)

    def run_epoch():
        box.assign(next(epoch))
        return 10.0

    return box, run_epoch, lambda: next(held)


def test_the_least_held_out_loss_is_kept_and_training_stops_after_patience_epochs_without_a_better_one():
    box, run_epoch, held_out = scripted([3.0, 2.0, 2.5, 1.5, 1.6, 1.5, 0.1, 0.0])
    lines = []
    history = train_keeping_best(run_epoch, held_out, [box], epochs=8, patience=2, log=lines.append)
    assert history["best_epoch"] == 4 and history["val_loss"] == [3.0, 2.0, 2.5, 1.5, 1.6, 1.5]  # a tie is no gain
    assert history["loss"] == [10.0] * 6 and len(lines) == 6 and lines[3] == "epoch 4: loss 10.0000, held-out 1.5000"
    assert float(box.value) == 4.0  # epoch 4's value restored after epoch 6 set 6


def test_without_a_finite_held_out_loss_nothing_is_kept():
    box, run_epoch, held_out = scripted([math.nan] * 5)
    history = train_keeping_best(run_epoch, held_out, [box], epochs=5, patience=3)
    assert history["best_epoch"] == 0 and len(history["val_loss"]) == 3 and float(box.value) == 3.0


def test_every_epoch_runs_while_the_held_out_loss_keeps_falling():
    box, run_epoch, held_out = scripted([5.0, 4.0, 3.0])
    history = train_keeping_best(run_epoch, held_out, [box], epochs=3, patience=1)
    assert history["best_epoch"] == 3 and len(history["loss"]) == 3 and float(box.value) == 3.0
