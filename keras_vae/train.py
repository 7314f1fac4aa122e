"""`fit`: the one library call behind `keras-vae fit`."""

import contextlib
import datetime
import json
import os

import keras

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


def prepare_data(config, dataset):
    """(train pipeline, validation pipeline, a few validation images) for `config`."""
    x_train, y_train = dataset.x_train, dataset.y_train
    if dataset.x_test is not None:
        x_val, y_val = dataset.x_test, dataset.y_test
    else:
        x_train, y_train, x_val, y_val = pipeline.split_validation(
            x_train, y_train, config.validation_split, config.seed
        )
    if config.binarize == "static":
        x_train = pipeline.binarize_once(x_train, config.seed)
    if config.binarize != "none":
        # Validation uses one fixed binarization so that epochs compare.
        x_val = pipeline.binarize_once(x_val, config.seed + 1)
    dynamic = config.binarize == "dynamic"
    with_labels = getattr(build_model_class(config), "uses_labels", False)
    train = pipeline.make_pipeline(
        x_train, config.batch_size, y=y_train if with_labels else None,
        dynamic_binarization=dynamic, shuffle=True, seed=config.seed,
    )
    val = pipeline.make_pipeline(x_val, config.batch_size, y=y_val if with_labels else None)
    return train, val, pipeline.to_unit_float(x_val[:NUM_SUMMARY_IMAGES])


def build_model_class(config):
    from keras_vae.models import get_model_class

    return get_model_class(config.model)


def jit_setting(value):
    return {"auto": "auto", "on": True, "off": False}[value]


def fit(config, verbose="auto"):
    """Trains the model `config` describes and exports it.

    Writes the run directory (config.json, checkpoints/, logs/, history.json,
    model.keras) and a SavedModel version under `config.export_dir`.

    Returns:
        dict with `run_dir`, `history`, `val_elbo` and `export_path`.

    Raises:
        UserError: for bad configuration or data.
        TrainingDiverged: when the loss becomes NaN (nothing is exported).
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"fit() takes a FitConfig. Received: {type(config).__name__}.")
    build_model_class(config)  # an unknown model fails before any data is loaded
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    keras.utils.set_random_seed(config.seed)
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    train_data, val_data, summary_images = prepare_data(config, dataset)

    run_dir = config.run_dir or default_run_dir(config)
    config.run_dir = run_dir
    os.makedirs(run_dir, exist_ok=True)
    config.save(os.path.join(run_dir, CONFIG_FILE))
    chief = distribute.is_chief(strategy)

    with dtype_policy(config.precision), strategy.scope():
        model = build_model(config, dataset.image_shape)
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            steps_per_execution=config.steps_per_execution,
            jit_compile=jit_setting(config.jit_compile),
        )
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    callbacks = [
        kv_callbacks.StopOnNaN(checkpoint_dir),
        kv_callbacks.AtomicCheckpoint(checkpoint_dir),
    ]
    if chief:
        callbacks.append(
            kv_callbacks.Summaries(
                os.path.join(run_dir, "logs"), summary_images, model.metric_names(), config.seed
            )
        )
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the pipeline shuffles, seeded
    )
    result = {"run_dir": run_dir, "history": history.history, "export_path": None}
    result["val_elbo"] = float(history.history["val_elbo"][-1])
    if chief:
        write_history(os.path.join(run_dir, HISTORY_FILE), history.history)
        save_keras_model(model, os.path.join(run_dir, MODEL_FILE))
        if config.export:
            name = config.export_name or os.path.basename(os.path.normpath(run_dir))
            result["export_path"] = export_saved_model(model, config.export_dir, name)
    return result


def write_history(path, history):
    with open(path, "w") as f:
        json.dump({k: [float(v) for v in values] for k, values in history.items()}, f, indent=2)
        f.write("\n")


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
    import keras_vae.models  # noqa: F401  registers the classes with Keras

    build_model_class(config)
    try:
        model = keras.saving.load_model(model_path)
    except Exception as error:  # noqa: BLE001 - any failure to read the file
        raise UserError(f"{model_path} cannot be loaded: {error}.") from None
    return config, model
