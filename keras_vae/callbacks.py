"""Callbacks of `keras-vae fit`: TensorBoard summaries, NaN guard, atomic checkpoints."""

import contextlib
import json
import os
import re
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_vae import metrics
from keras_vae.errors import TrainingDiverged
from keras_vae.images import make_grid

CODE_BATCH = 500  # images per encoder call of the code statistics


class Stopwatch:
    """Seconds spent per phase of a run, accumulated: `with stopwatch("export"): ...`.

    `fit` times its phases with one (data, build, train steps, validation, summaries,
    checkpoints, save, export) and returns them as `timings`, so a run's wall time can be
    told apart from its training step's.
    """

    def __init__(self):
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, phase):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - started)

    def add(self, phase, seconds):
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


class PhaseTimer(keras.callbacks.Callback):
    """Adds the time of every training step (`train steps`) and of validation to a Stopwatch."""

    def __init__(self, stopwatch):
        super().__init__()
        self.stopwatch = stopwatch
        self.started = None

    def _begin(self, *args, **kwargs):
        self.started = time.perf_counter()

    def _end(self, phase):
        self.stopwatch.add(phase, time.perf_counter() - self.started)

    on_train_batch_begin = on_test_begin = _begin

    def on_train_batch_end(self, batch, logs=None):
        self._end("train steps")

    def on_test_end(self, logs=None):
        self._end("validation")


class StopOnNaN(keras.callbacks.Callback):
    """Raises `TrainingDiverged` the moment the training loss is NaN or infinite.

    Raising (rather than setting `stop_training`) ends `fit` before the epoch's
    checkpoint or any export is written, so the last good ones stay intact.
    A check in the graph (tf.debugging.check_numerics) would be dropped by XLA;
    this per-batch host check works everywhere and measured no slower.
    """

    def __init__(self, checkpoint_dir=None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.all(np.isfinite(np.asarray(loss))):
            self.diverged(f"the loss became {np.asarray(loss).ravel()[0]} at epoch {self.epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        # A last step can leave non-finite weights (or a non-finite validation loss) behind a
        # finite training loss: check both before the epoch's checkpoint is written.
        val_loss = (logs or {}).get("val_loss")
        if val_loss is not None and not np.all(np.isfinite(np.asarray(val_loss))):
            self.diverged(f"the validation loss became {np.asarray(val_loss).ravel()[0]} at epoch {epoch + 1}")
        broken = non_finite_weights(self.model)
        if broken:
            self.diverged(f"the weights {', '.join(broken[:3])} became non-finite at the end of epoch {epoch + 1}")

    def diverged(self, what):
        last = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        kept = f"The last good checkpoint, {last}, is intact" if last else "No checkpoint had been written yet"
        raise TrainingDiverged(
            f"Training diverged: {what}. Nothing was exported. {kept}, and earlier exports are untouched. "
            "Try a lower --learning-rate, KL warm-up (--kl-warmup-steps), or check the data."
        )


def non_finite_weights(model):
    """Paths of the model's variables that hold NaN or infinity."""
    return [w.path for w in model.weights
            if w.dtype in ("float16", "bfloat16", "float32", "float64") and not np.all(np.isfinite(np.asarray(w)))]


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch, writes `epoch-NNN/` with the weights and the training state.

    `epoch-NNN/model.weights.h5` holds the model and optimizer variables;
    `epoch-NNN/state.json` the epoch count, the noise seed's state, the
    per-epoch history so far and the run's configuration. The folder is written under a temporary name
    and renamed, so a kill at any moment leaves every earlier checkpoint whole
    and no half-written one under a real name. The newest `keep` are kept.

    Args:
        directory: where the epoch folders go.
        config: the run's configuration as a dict, kept with every checkpoint.
        history: the history of epochs already done (when resuming).
        keep: how many checkpoints to keep.
    """

    def __init__(self, directory, config, history=None, keep=2, extra_state=None, stopwatch=None):
        super().__init__()
        self.stopwatch = stopwatch or Stopwatch()
        self.directory = directory
        self.config = config
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.keep = keep
        self.extra_state = dict(extra_state or {})
        os.makedirs(directory, exist_ok=True)
        remove_temporaries(directory)

    def on_epoch_end(self, epoch, logs=None):
        with self.stopwatch("checkpoints"):
            self.write(epoch, logs)

    def write(self, epoch, logs):
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        final = os.path.join(self.directory, f"epoch-{epoch + 1:03d}")
        temporary = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{epoch + 1:03d}-", dir=self.directory)
        try:
            self.model.save_weights(os.path.join(temporary, WEIGHTS_FILE))
            state = {
                "epoch": epoch + 1,
                "seed_state": [int(v) for v in np.asarray(self.model.seed_generator.state.numpy())],
                "history": self.history,
                "config": self.config,
                **self.extra_state,
            }
            with open(os.path.join(temporary, STATE_FILE), "w") as f:
                json.dump(state, f)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        # Later epochs on disk are left from a run that was started over (--force).
        for old in checkpoints(self.directory):
            if checkpoint_epoch(old) >= epoch + 1:
                shutil.rmtree(old)
        os.rename(temporary, final)
        for old in checkpoints(self.directory)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
TEMPORARY_PREFIX = ".tmp-epoch-"
CHECKPOINT_NAME = re.compile(r"epoch-(\d+)")


def checkpoint_epoch(path):
    return int(CHECKPOINT_NAME.fullmatch(os.path.basename(path)).group(1))


def checkpoints(directory):
    """Complete checkpoint folders, oldest first (by epoch number, so epoch 1000 follows 999)."""
    if not os.path.isdir(directory):
        return []
    found = [os.path.join(directory, name) for name in os.listdir(directory) if CHECKPOINT_NAME.fullmatch(name)]
    return sorted((p for p in found if os.path.exists(os.path.join(p, STATE_FILE))), key=checkpoint_epoch)


def remove_temporaries(directory):
    """Removes half-written checkpoint folders left by runs that died while writing one."""
    for name in os.listdir(directory):
        if name.startswith(TEMPORARY_PREFIX):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def latest_checkpoint(directory):
    found = checkpoints(directory) if directory else []
    return found[-1] if found else None


def read_checkpoint_state(path):
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def restore_checkpoint(model, path):
    """Loads weights, optimizer and noise-seed state from a checkpoint; returns its state dict."""
    state = read_checkpoint_state(path)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(path, WEIGHTS_FILE))
    model.seed_generator.state.assign(np.asarray(state["seed_state"], model.seed_generator.state.dtype))
    return state


class Summaries(keras.callbacks.Callback):
    """Writes the ELBO terms and images to TensorBoard every epoch.

    Scalars `loss`, `elbo`, `reconstruction_loss`, `kl`, `beta` go to the
    `train/` and `validation/` runs under the same tags. For a model with a
    Gaussian posterior, `validation/` also gets `mutual_information` (I(x; z)
    under the aggregate posterior of the given images, in nats) and
    `active_units`: the two signs of posterior collapse that the KL alone
    does not show. Images go to `validation/`: `reconstructions` (inputs
    above their reconstructions) and `samples` (decoded prior draws with a
    fixed seed, so that epochs compare), `grid_size` of each.

    Args:
        log_dir: the TensorBoard log directory.
        images: validation images [N, H, W, C] in [0, 1] (the code statistics read all, the grids the first few).
        labels: their labels [N] for a conditional model, else None.
        metric_names: the scalar tags to write.
        audio: for recordings, their `keras_vae.audio.AudioFormat`: the Audio tab then gets `reconstructions`
            (each input, then its reconstruction) and `samples` as sound, and `spectrograms` their pictures;
            `masks` [N, T] silence the inputs' padding.
    """

    def __init__(self, log_dir, images, labels, metric_names, seed=0, stopwatch=None, grid_size=8, audio=None,
                 masks=None):
        super().__init__()
        self.audio = audio  # recordings: their `AudioFormat`, for the Audio tab
        self.masks = None if masks is None else np.asarray(masks)[:grid_size]
        self.stopwatch = stopwatch or Stopwatch()
        self.train_writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
        self.val_writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation"))
        self.all_images = np.asarray(images, np.float32)
        self.all_labels = labels  # for a conditional model, else None
        self.images, self.labels = self.all_images[:grid_size], None if labels is None else labels[:grid_size]
        self.metric_names = metric_names
        self.seed = seed

    def on_epoch_end(self, epoch, logs=None):
        with self.stopwatch("summaries"):
            self.write(epoch + 1, logs or {})

    def write(self, step, logs):
        for writer, prefix in ((self.train_writer, ""), (self.val_writer, "val_")):
            with writer.as_default(step=step):
                for name in self.metric_names:
                    if prefix + name in logs:
                        tf.summary.scalar(name, float(logs[prefix + name]))
        with self.val_writer.as_default(step=step):
            for name, value in self.code_statistics().items():
                tf.summary.scalar(name, value)
            if self.images.ndim == 4:  # images; signals [N, T, C] get no pictures
                reconstructions, samples = self.pictures()
                columns = len(self.images)
                tf.summary.image("reconstructions",
                                 make_grid(np.concatenate([self.images, reconstructions]), columns)[None])
                tf.summary.image("samples", make_grid(samples, columns)[None])
            elif self.audio is not None:
                self.write_audio()
        self.train_writer.flush()
        self.val_writer.flush()

    def write_audio(self):
        """The Audio tab: inputs interleaved with their reconstructions, and samples; their spectrograms."""
        from keras_vae.listen import silence_padding, spectrogram_picture

        reconstructions, samples = self.pictures()
        inputs = silence_padding(self.images, self.masks, self.audio)
        reconstructions = silence_padding(reconstructions, self.masks, self.audio)
        pairs = np.stack([inputs, reconstructions], axis=1).reshape(-1, *inputs.shape[1:])  # a0, â0, a1, â1, ...
        for tag, clips in (("reconstructions", pairs), ("samples", samples)):
            waveforms = self.audio.to_waveforms(clips, iterations=30)
            tf.summary.audio(tag, waveforms[..., None], self.audio.sample_rate, max_outputs=len(waveforms))
        picture = spectrogram_picture(np.concatenate([inputs, reconstructions, samples]), self.audio, len(inputs))
        tf.summary.image("spectrograms", picture[None])

    def code_statistics(self):
        """{mutual_information, active_units} of the images' posteriors; {} for models without one."""
        return posterior_statistics(self.model, self.all_images, self.all_labels)

    def pictures(self):
        """(reconstructions, samples) in one traced function: an autoregressive decoder draws pixel by pixel
        in a while_loop, which runs many times faster traced than eagerly."""
        if getattr(self, "_pictures", None) is None:
            self._pictures = tf.function(lambda: (self.model.reconstruct(self.images, self.labels),
                                                  self.model.sample(len(self.images), seed=self.seed)[0]))
        return [np.asarray(images) for images in self._pictures()]

    def on_train_end(self, logs=None):
        self.train_writer.close()
        self.val_writer.close()


def posterior_statistics(model, images, labels=None):
    """{mutual_information, active_units} of the posteriors q(z|x) of images [N, H, W, C] (labels [N] for a
    conditional model): I(x; z) under their aggregate posterior in nats, and the units whose mean varies;
    {} for a model without a Gaussian posterior."""
    if not (model.has_elbo and model.continuous_code):
        return {}
    loc, scale = [], []
    for start in range(0, len(images), CODE_BATCH):
        mean, spread = model.encode(images[start : start + CODE_BATCH],
                                    None if labels is None else labels[start : start + CODE_BATCH])
        loc.append(np.asarray(mean))
        scale.append(np.asarray(spread))
    loc, scale = np.concatenate(loc), np.concatenate(scale)
    return {"mutual_information": metrics.posterior_mutual_information(loc, scale),
            "active_units": metrics.active_units(loc)[0]}


class AggressiveEncoder(keras.callbacks.Callback):
    """Aggressive training of the inference network against lagging inference (He et al. 2019, Algorithm 1).

    While aggressive, steps alternate between two phases: the inference network alone
    (`phase="inference"`) on fresh batches until its loss stops falling (the mean over a window of
    `window` steps is not below the previous window's, or `max_inner_steps` steps were taken), then one
    step of the generative model (`phase="generative"`). At an epoch's end the mutual information I(x; z)
    of `images` is measured; once it is not above the epoch before's, training is joint (the model's own
    train function) for the rest of the run. The state (aggressive or not, the last MI) is kept in
    `model.aggressive_state`, and the inference-only steps in `model.inference_iterations`, so a resumed run
    goes on where it stopped; the optimizer's `iterations` count the decoder's updates only.

    Each batch is one step of either phase (the run needs `steps_per_execution` 1), so an epoch is one pass
    over the data, as without the remedy, and an aggressive epoch gives the decoder 1/11 to 1/101 of its
    batches. He et al. count an epoch in decoder updates instead, which costs 10-100 times the compute.

    History gains `aggressive` (1 while the next epoch is aggressive), `decoder_steps` and
    `encoder_only_steps` (totals so far). Put this callback before the checkpoint so that it records them.

    Args:
        images: validation images [N, H, W, C] whose I(x; z) decides when to stop.
        labels: their labels [N] for a conditional model, else None.
    """

    def __init__(self, images, labels=None, window=10, max_inner_steps=100):  # the paper's code for images
        super().__init__()
        self.images, self.labels = np.asarray(images, np.float32), labels
        self.window, self.max_inner_steps = int(window), int(max_inner_steps)

    def on_train_begin(self, logs=None):
        self.plain = self.model.make_train_function(force=True)  # not a phase function a failed run left
        self.functions = {phase: self.model.phase_train_function(phase) for phase in ("inference", "generative")}
        self.is_aggressive = bool(np.asarray(self.model.aggressive_state)[0] > 0.5)
        self.start_inner_loop()

    def start_inner_loop(self):
        self.phase, self.inner_steps, self.window_sum, self.previous_window = "inference", 0, 0.0, np.inf

    def on_train_batch_begin(self, batch, logs=None):
        self.current = self.phase if self.is_aggressive else "joint"
        self.model.train_function = self.functions[self.current] if self.is_aggressive else self.plain

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).pop("batch_loss", None)
        if self.current == "generative":
            self.start_inner_loop()
        if self.current != "inference":
            return
        self.inner_steps += 1
        self.window_sum += float(np.asarray(loss).reshape(-1)[0])
        if self.inner_steps % self.window == 0:
            mean = self.window_sum / self.window
            if not mean < self.previous_window:
                self.phase = "generative"
            self.previous_window, self.window_sum = mean, 0.0
        if self.inner_steps >= self.max_inner_steps:
            self.phase = "generative"

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs.pop("batch_loss", None)
        if self.is_aggressive:
            # In float32, as it is kept: the same weights must read as no rise.
            information = np.float32(posterior_statistics(self.model, self.images, self.labels)["mutual_information"])
            previous = np.asarray(self.model.aggressive_state)[1]
            self.is_aggressive = bool(information > previous)
            self.model.aggressive_state.assign([float(self.is_aggressive), information])
        logs["aggressive"] = float(self.is_aggressive)
        logs["decoder_steps"] = float(np.asarray(self.model.optimizer.iterations))
        logs["encoder_only_steps"] = float(np.asarray(self.model.inference_iterations))

    def on_train_end(self, logs=None):
        self.model.train_function = self.plain
