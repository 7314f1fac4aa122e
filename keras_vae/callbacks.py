"""Callbacks of `keras-vae fit`: TensorBoard summaries, NaN guard, atomic checkpoints."""

import glob
import os

import keras
import numpy as np
import tensorflow as tf

from keras_vae.errors import TrainingDiverged
from keras_vae.images import make_grid


class StopOnNaN(keras.callbacks.Callback):
    """Raises `TrainingDiverged` the moment the training loss is NaN or infinite.

    Raising (rather than setting `stop_training`) ends `fit` before the epoch's
    checkpoint or any export is written, so the last good ones stay intact.
    """

    def __init__(self, checkpoint_dir=None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            last = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
            kept = f"The last good checkpoint, {last}, is intact" if last else "No checkpoint had been written yet"
            raise TrainingDiverged(
                f"Training diverged: the loss became {float(loss)} at epoch {self.epoch + 1}, "
                f"step {batch + 1}. Nothing was exported. {kept}, and earlier exports are untouched. "
                "Try a lower --learning-rate, KL warm-up (--kl-warmup-steps), or check the data."
            )


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves weights after every epoch to `epoch-NNN.weights.h5`, keeping the newest `keep`.

    Each file is written under a temporary name and renamed, so a crash during
    the write never leaves a half-written checkpoint under a real name.
    """

    def __init__(self, directory, keep=2, initial_epoch=0):
        super().__init__()
        self.directory = directory
        self.keep = keep
        os.makedirs(directory, exist_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        final = os.path.join(self.directory, f"epoch-{epoch + 1:03d}.weights.h5")
        temporary = final + ".tmp.weights.h5"
        self.model.save_weights(temporary)
        os.replace(temporary, final)
        for old in checkpoints(self.directory)[: -self.keep]:
            os.remove(old)


def checkpoints(directory):
    return sorted(glob.glob(os.path.join(directory, "epoch-[0-9][0-9][0-9].weights.h5")))


def latest_checkpoint(directory):
    found = checkpoints(directory) if directory and os.path.isdir(directory) else []
    return found[-1] if found else None


class Summaries(keras.callbacks.Callback):
    """Writes the ELBO terms and images to TensorBoard every epoch.

    Scalars `loss`, `elbo`, `reconstruction_loss`, `kl`, `beta` go to the
    `train/` and `validation/` runs under the same tags; images go to
    `validation/`: `reconstructions` (inputs above their reconstructions)
    and `samples` (decoded prior draws with a fixed seed, so that epochs
    compare).

    Args:
        log_dir: the TensorBoard log directory.
        images: a few validation images [N, H, W, C] in [0, 1].
        metric_names: the scalar tags to write.
    """

    def __init__(self, log_dir, images, metric_names, seed=0):
        super().__init__()
        self.train_writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
        self.val_writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation"))
        self.images = np.asarray(images, np.float32)
        self.metric_names = metric_names
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = epoch + 1
        for writer, prefix in ((self.train_writer, ""), (self.val_writer, "val_")):
            with writer.as_default(step=step):
                for name in self.metric_names:
                    if prefix + name in logs:
                        tf.summary.scalar(name, float(logs[prefix + name]))
        with self.val_writer.as_default(step=step):
            tf.summary.image("reconstructions", self.reconstruction_grid()[None])
            tf.summary.image("samples", self.sample_grid()[None])
        self.train_writer.flush()
        self.val_writer.flush()

    def reconstruction_grid(self):
        reconstructions = np.asarray(self.model.reconstruct(self.images))
        return make_grid(np.concatenate([self.images, reconstructions]), columns=len(self.images))

    def sample_grid(self):
        images = np.asarray(self.model.sample(len(self.images), seed=self.seed)[0])
        return make_grid(images, columns=len(self.images))

    def on_train_end(self, logs=None):
        self.train_writer.close()
        self.val_writer.close()
