"""`fit`: the one library call behind `keras-vae fit`."""

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from keras_vae import callbacks as kv_callbacks
from keras_vae import distribute
from keras_vae.config import FitConfig
from keras_vae.data import pipeline
from keras_vae.data.datasets import load_dataset
from keras_vae.errors import UserError
from keras_vae.export import export_saved_model, save_keras_model
from keras_vae.models import build_model

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
MODEL_FILE = "model.keras"
NUM_SUMMARY_IMAGES = 8


def default_run_dir(config):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dataset = os.path.splitext(os.path.basename(os.path.normpath(config.dataset)))[0]
    return os.path.join("runs", f"{dataset}-{config.model}-{stamp}")


@contextlib.contextmanager
def dtype_policy(precision):
    """Sets the Keras dtype policy for the models built inside, and restores it after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def prepare_data(config, dataset, replicas=1):
    """(train pipeline, validation pipeline, (a few validation images, their labels or None),
    training-set size).

    With several replicas the validation set is cut to a multiple of their
    number: Keras averages the first batch over replicas before evaluating,
    which needs equal shards.
    """
    x_train, y_train = dataset.x_train, dataset.y_train
    if dataset.x_test is not None:
        x_val, y_val = dataset.x_test, dataset.y_test
    else:
        x_train, y_train, x_val, y_val = pipeline.split_validation(
            x_train, y_train, config.validation_split, config.seed
        )
    keep = len(x_val) - len(x_val) % replicas
    x_val, y_val = x_val[:keep], (y_val[:keep] if y_val is not None else None)
    if config.binarize == "static":
        x_train = pipeline.binarize_once(x_train, config.seed)
    if config.binarize != "none":
        # Validation uses one fixed binarization so that epochs compare.
        x_val = pipeline.binarize_once(x_val, config.seed + 1)
    dynamic = config.binarize == "dynamic"
    with_labels = getattr(build_model_class(config), "uses_labels", False)
    if with_labels and (y_train is None or y_val is None):
        raise UserError(
            f"--model {config.model} is conditional and needs labels, but the dataset {config.dataset!r} has none. "
            "Use a labelled dataset (mnist, fashion_mnist, sprites, a .npz with y, or an image folder with "
            "one sub-folder per class)."
        )
    # Whole batches only (the remainder changes with every reshuffle): one batch
    # shape, so XLA compiles the step once instead of again for a ragged last batch.
    train = pipeline.make_pipeline(
        x_train, config.batch_size, y=y_train if with_labels else None,
        dynamic_binarization=dynamic, shuffle=True, seed=config.seed,
        drop_remainder=len(x_train) >= config.batch_size,
    )
    val = pipeline.make_pipeline(x_val, config.batch_size, y=y_val if with_labels else None)
    summary = (pipeline.to_unit_float(x_val[:NUM_SUMMARY_IMAGES]),
               y_val[:NUM_SUMMARY_IMAGES] if with_labels else None)
    return train, val, summary, len(x_train)


def build_model_class(config):
    from keras_vae.models import get_model_class

    return get_model_class(config.model)


def learning_rate(config, total_steps):
    """A constant rate, or a cosine decay to 0 over the whole run (Loshchilov & Hutter 2017)."""
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, total_steps))
    return config.learning_rate


def jit_setting(value, model, strategy):
    """XLA or not. `auto`: on for networks without convolutions on one CPU device
    (measured 1.3x faster for `mlp` on this 2-core CPU; XLA made the conv
    nets about 1.7x slower there), otherwise Keras's own choice."""
    if value != "auto":
        return value == "on"
    cpu_only = not tf.config.list_logical_devices("GPU")
    if cpu_only and strategy.num_replicas_in_sync == 1 and not has_convolutions(model):
        return True
    return "auto"


def has_convolutions(model):
    convolutional = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                     keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    return any(isinstance(layer, convolutional) for layer in model._flatten_layers(include_self=False))


# Settings that may change between the runs of one run directory: where
# things go and how fast they run, not what is trained.
RESUMABLE_CHANGES = {
    "epochs", "run_dir", "data_dir", "export", "export_dir", "export_name",
    "strategy", "cpu_replicas", "steps_per_execution", "jit_compile",
}


def check_same_run(run_dir, config, saved):
    """Refuses to resume a checkpoint made with a different configuration (`saved`, a dict)."""
    wanted = config.to_dict()
    changed = sorted(k for k in wanted if k not in RESUMABLE_CHANGES and saved.get(k) != wanted[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted[k]!r} now" for k in changed)
        raise UserError(
            f"{run_dir} holds a run with a different configuration ({details}). "
            "Use another --run-dir, or --force to start that run over."
        )


def fit(config, verbose="auto", force=False, log=print, extra_callbacks=()):
    """Trains the model `config` describes and exports it.

    Writes the run directory (config.json, checkpoints/, logs/, history.json,
    model.keras) and a SavedModel version under `config.export_dir`.
    Re-running a run directory resumes it from its last complete epoch; a
    finished run is not trained again unless `force` (which starts over).

    Returns:
        dict with `run_dir`, `history`, `val_elbo`, `export_path` and
        `complete` (True when the run had already finished).

    Args:
        config: a `FitConfig`.
        verbose: Keras's progress-bar setting.
        force: start the run directory over instead of resuming it.
        log: where one-line messages go.
        extra_callbacks: more Keras callbacks (benchmarks use this to time epochs).

    Raises:
        UserError: for bad configuration or data.
        TrainingDiverged: when the loss becomes NaN (nothing is exported).
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"fit() takes a FitConfig. Received: {type(config).__name__}.")
    build_model_class(config)  # an unknown model fails before any data is loaded
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    chief = distribute.is_chief(strategy)
    if config.strategy == "multi-worker" and not config.run_dir:
        raise UserError("--strategy multi-worker needs --run-dir: every worker must name the same folder.")
    run_dir = config.run_dir = config.run_dir or default_run_dir(config)
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    # Other workers keep their own checkpoints in a scratch folder of their own.
    own_checkpoint_dir = checkpoint_dir if chief else distribute.worker_scratch(run_dir, strategy)

    resume_from = None if force else kv_callbacks.latest_checkpoint(checkpoint_dir)
    if resume_from:
        state = kv_callbacks.read_checkpoint_state(resume_from)
        check_same_run(run_dir, config, state["config"])
        if state["epoch"] >= config.epochs and os.path.exists(os.path.join(run_dir, MODEL_FILE)):
            log(
                f"{run_dir} is already complete ({state['epoch']} epochs). "
                "Use --force to start it over, or a larger --epochs to train it further."
            )
            return {"run_dir": run_dir, "history": state["history"], "export_path": None, "complete": True}

    keras.utils.set_random_seed(config.seed)
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UserError(
            f"--batch-size is the global batch and must divide evenly over the {replicas} replicas. "
            f"Received: batch_size={config.batch_size}."
        )
    train_data, val_data, summary_images, num_train = prepare_data(config, dataset, replicas)
    os.makedirs(run_dir, exist_ok=True)
    if chief:
        config.save(os.path.join(run_dir, CONFIG_FILE))

    steps_per_epoch = max(1, num_train // config.batch_size)
    # config.json keeps kl_warmup_steps=None ("half the run"); the model gets the number.
    model_config = dataclasses.replace(config, kl_warmup_steps=config.warmup_steps(steps_per_epoch * config.epochs))
    with dtype_policy(config.precision), strategy.scope():
        model = build_model(model_config, dataset.image_shape, dataset.num_classes)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate(config, steps_per_epoch * config.epochs)),
            steps_per_execution=config.steps_per_execution,
            jit_compile=jit_setting(config.jit_compile, model, strategy),
        )
        initial_epoch, history = 0, {}
        if resume_from:
            state = kv_callbacks.restore_checkpoint(model, resume_from)
            initial_epoch, history = state["epoch"], state["history"]
            log(f"Resuming from epoch {initial_epoch} ({resume_from}).")

    checkpointer = kv_callbacks.EpochCheckpoint(own_checkpoint_dir, config.to_dict(), history)
    callbacks = [kv_callbacks.StopOnNaN(checkpoint_dir), checkpointer, *extra_callbacks]
    if chief:
        log_dir = os.path.join(run_dir, "logs")
        callbacks.append(kv_callbacks.Summaries(log_dir, *summary_images, model.metric_names(), config.seed))
    if initial_epoch < config.epochs:
        model.fit(
            train_data,
            validation_data=val_data,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the pipeline shuffles, seeded
        )
    history = checkpointer.history
    result = {"run_dir": run_dir, "history": history, "export_path": None, "complete": False,
              "val_elbo": history["val_elbo"][-1] if "val_elbo" in history else None,
              "split": "test" if dataset.x_test is not None else "validation"}
    # Every worker saves (a save may need all of them), the others into scratch.
    output_dir = run_dir if chief else distribute.worker_scratch(run_dir, strategy)
    save_keras_model(model, os.path.join(output_dir, MODEL_FILE))
    if chief:
        write_history(os.path.join(run_dir, HISTORY_FILE), history)
    if config.export:
        name = config.export_name or os.path.basename(os.path.normpath(run_dir))
        export_dir = config.export_dir if chief else os.path.join(output_dir, "export")
        path = export_saved_model(model, export_dir, name)
        if chief:
            result["export_path"] = path
        else:
            shutil.rmtree(export_dir, ignore_errors=True)
    return result


def write_history(path, history):
    """Writes history.json atomically: Keras's History.history, one value per epoch."""
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump({k: [float(v) for v in values] for k, values in history.items()}, f, indent=2)
        f.write("\n")
    os.replace(temporary, path)


def load_run(run_dir):
    """(config, model) of a finished run directory, for export and exploration."""
    from keras_vae.config import load_config

    config_path = os.path.join(run_dir, CONFIG_FILE)
    model_path = os.path.join(run_dir, MODEL_FILE)
    if not os.path.isdir(run_dir):
        raise UserError(f"Run directory {run_dir} does not exist.")
    if not os.path.exists(config_path) or not os.path.exists(model_path):
        raise UserError(
            f"{run_dir} holds no finished model: expected {CONFIG_FILE} and {MODEL_FILE} there "
            "(they are written when `keras-vae fit` completes)."
        )
    config = load_config(config_path)
    build_model_class(config)  # imports the model classes, registering them with Keras
    try:
        model = keras.saving.load_model(model_path)
    except Exception as error:  # noqa: BLE001 - any failure to read the file
        raise UserError(f"{model_path} cannot be loaded: {error}.") from None
    return config, model


PRIOR_HISTORY_FILE = "prior_history.json"


def fit_prior(run_dir, epochs=20, batch_size=128, learning_rate=1e-3, export=True, export_dir=None,
              verbose="auto", log=print):
    """Trains the PixelCNN prior over a finished VQ-VAE run's code maps (`keras-vae fit-prior`).

    Encodes the training split to code maps, fits the run's `prior_network`
    to them by maximum likelihood, marks the prior fitted, and rewrites
    model.keras (atomically) so that `sample`, `evaluate` and exports use it.

    Returns:
        dict with `history`, `test_nats` (−log p(c) per code map on the test
        split), `uniform_nats` (h·w·log K) and `export_path`.
    """
    from keras_vae.evaluate import batches, load_split

    for name, value in (("epochs", epochs), ("batch-size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"--{name} must be a positive integer. Received: {value!r}.")
    if not learning_rate > 0:
        raise UserError(f"--learning-rate must be positive. Received: {learning_rate!r}.")
    config, model = load_run(run_dir)
    if not hasattr(model, "prior_network"):
        raise UserError(f"fit-prior trains the code prior of a vq_vae run; {run_dir} holds a {config.model} model.")
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)

    def codes(split):
        data = load_split(config, split, dataset)
        return np.concatenate([model.encode_indices(b).numpy() for b in batches(data.x, 500)])

    train_codes, test_codes = codes("train"), codes("test")
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
    save_keras_model(model, os.path.join(run_dir, MODEL_FILE))
    write_history(os.path.join(run_dir, PRIOR_HISTORY_FILE), history)
    result = {"history": history, "test_nats": history["val_loss"][-1],
              "uniform_nats": positions * math.log(model.codebook_size), "export_path": None}
    if export:
        name = config.export_name or os.path.basename(os.path.normpath(run_dir))
        result["export_path"] = export_saved_model(model, export_dir or config.export_dir, name)
    return result
