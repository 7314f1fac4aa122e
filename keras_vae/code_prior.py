"""`fit_prior`: trains a finished discrete-code run's PixelCNN priors over its code maps (`keras-vae fit-prior`)."""

import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_vae import distribute, runs
from keras_vae.config import RUN_HYPERPARAMETERS
from keras_vae.data.datasets import dataset_of
from keras_vae.data.splits import batches, load_split
from keras_vae.errors import UserError
from keras_vae.export import export_saved_model, save_keras_model
from keras_vae.files import write_json
from keras_vae.models import get_model_class
from keras_vae.models.vq import keyed


def code_maps(model, data, batch_size=500):
    """{level: int32 code maps [N, h, w]} of a split."""
    parts = [{level: maps.numpy() for level, maps in model.encode_indices(b).items()} for b in batches(data.x, batch_size)]
    return {level: np.concatenate([part[level] for part in parts]) for level in model.levels}


def prior_inputs(model, level, codes):
    """What `level`'s prior network reads: its own maps, and the maps of the level that conditions it."""
    above = model.prior_condition(level)
    return codes[level] if above is None else (codes[level], codes[above])


class NatsPerMap(keras.callbacks.Callback):
    """Writes a prior's training and test −log p per code map (nats) to TensorBoard after each epoch."""

    def __init__(self, log_dir, level, positions):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.tag, self.positions = keyed("prior", level), positions

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default():
            for key, name in (("loss", "train_nats"), ("val_loss", "test_nats")):
                if key in (logs or {}):
                    tf.summary.scalar(f"{self.tag}/{name}", logs[key] * self.positions, step=epoch + 1)
        self.writer.flush()


def fit_prior(run_dir, epochs=20, batch_size=128, learning_rate=1e-3, export=True, export_dir=None,
              verbose="auto"):
    """Encodes the training split to code maps, fits each level's gated PixelCNN prior to them by maximum
    likelihood (top level first; a lower level's prior reads the codes above it), under the run's own
    distribution strategy, marks the prior fitted, and rewrites model.keras (atomically) so that `sample`,
    `evaluate` and exports use it. Curves go to TensorBoard under the run's logs/prior.

    Returns:
        dict with `history` ({"prior" or "prior_<level>": {loss, val_loss}} in nats per code map), `test_nats` (−log p(c) per
        example on the test split, all levels), `uniform_nats` (Σ h·w·log K), `export_path` and `replicas`
        (the replicas the priors were trained on).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate)):
        RUN_HYPERPARAMETERS[name].check(value)
    config = runs.finished_run_config(run_dir)
    if not hasattr(get_model_class(config.model), "prior_of"):
        raise UserError(f"fit-prior trains the code priors of a discrete-code run (vq_vae, vq_vae2); {run_dir} "
                        f"holds a {config.model} model.")
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)  # before anything starts TF's devices
    if batch_size % strategy.num_replicas_in_sync:
        raise UserError(f"--batch-size must divide evenly over the run's {strategy.num_replicas_in_sync} replicas. "
                        f"Received: batch_size={batch_size}.")
    with strategy.scope():
        _, model = runs.load_run(run_dir)  # its variables under the run's strategy
    dataset = dataset_of(config)
    train_codes, test_codes = (code_maps(model, load_split(config, split, dataset)) for split in ("train", "test"))
    keras.utils.set_random_seed(config.seed)
    history = {}
    for level in model.levels:
        network = model.prior_of(level)
        positions = math.prod(model.grids[level])
        with strategy.scope():
            network.trainable = True
            network.compile(optimizer=keras.optimizers.Adam(learning_rate),
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        logs = NatsPerMap(os.path.join(run_dir, runs.LOG_DIR, "prior"), level, positions)
        fitted = network.fit(prior_inputs(model, level, train_codes), train_codes[level],
                             validation_data=(prior_inputs(model, level, test_codes), test_codes[level]),
                             epochs=epochs, batch_size=batch_size, verbose=verbose, callbacks=[logs]).history
        network.trainable = False
        history[keyed("prior", level)] = {name: [float(v) * positions for v in values] for name, values in fitted.items()}
    model.prior_fitted.assign(1.0)
    save_keras_model(model, os.path.join(run_dir, runs.MODEL_FILE))
    write_json(os.path.join(run_dir, runs.PRIOR_HISTORY_FILE), history)
    positions = sum(math.prod(grid) for grid in model.grids.values())
    result = {"history": history, "test_nats": sum(h["val_loss"][-1] for h in history.values()),
              "uniform_nats": positions * math.log(model.num_codes), "export_path": None,
              "replicas": strategy.num_replicas_in_sync}
    if export:
        result["export_path"] = export_saved_model(model, export_dir or config.export_dir,
                                                   runs.export_name(config, run_dir))
    return result
