"""`fit_prior`: trains a finished VQ-VAE run's PixelCNN prior over its code maps (`keras-vae fit-prior`)."""

import math
import os

import keras
import numpy as np

from keras_vae import runs
from keras_vae.data.datasets import load_dataset
from keras_vae.data.splits import batches, load_split
from keras_vae.errors import UserError
from keras_vae.export import export_saved_model, save_keras_model

PRIOR_HISTORY_FILE = "prior_history.json"


def code_maps(model, data, batch_size=500):
    """int32 code maps [N, h, w] of a split."""
    return np.concatenate([model.encode_indices(b).numpy() for b in batches(data.x, batch_size)])


def fit_prior(run_dir, epochs=20, batch_size=128, learning_rate=1e-3, export=True, export_dir=None,
              verbose="auto"):
    """Encodes the training split to code maps, fits the run's `prior_network` to them by maximum
    likelihood, marks the prior fitted, and rewrites model.keras (atomically) so that `sample`,
    `evaluate` and exports use it.

    Returns:
        dict with `history`, `test_nats` (−log p(c) per code map on the test
        split), `uniform_nats` (h·w·log K) and `export_path`.
    """
    for name, value in (("epochs", epochs), ("batch-size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"--{name} must be a positive integer. Received: {value!r}.")
    if not learning_rate > 0:
        raise UserError(f"--learning-rate must be positive. Received: {learning_rate!r}.")
    config, model = runs.load_run(run_dir)
    if not hasattr(model, "prior_network"):
        raise UserError(f"fit-prior trains the code prior of a vq_vae run; {run_dir} holds a {config.model} model.")
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    train_codes, test_codes = (code_maps(model, load_split(config, split, dataset)) for split in ("train", "test"))
    keras.utils.set_random_seed(config.seed)
    network = model.prior_network
    network.trainable = True
    network.compile(optimizer=keras.optimizers.Adam(learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = network.fit(train_codes, train_codes, validation_data=(test_codes, test_codes), epochs=epochs,
                          batch_size=batch_size, verbose=verbose).history
    network.trainable = False
    model.prior_fitted.assign(1.0)
    positions = model.latent_dim
    history = {name: [float(v) * positions for v in values] for name, values in history.items()}  # nats per map
    save_keras_model(model, os.path.join(run_dir, runs.MODEL_FILE))
    runs.write_history(os.path.join(run_dir, PRIOR_HISTORY_FILE), history)
    result = {"history": history, "test_nats": history["val_loss"][-1],
              "uniform_nats": positions * math.log(model.codebook_size), "export_path": None}
    if export:
        result["export_path"] = export_saved_model(model, export_dir or config.export_dir,
                                                   runs.export_name(config, run_dir))
    return result
