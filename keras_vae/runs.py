"""Run directories: where a run's files live, and reading a finished run back.

    <run_dir>/config.json        the FitConfig that trained it (`FitConfig.to_dict()`)
    <run_dir>/model.keras        the finished model (native Keras format)
    <run_dir>/history.json       one value per epoch of every logged metric
    <run_dir>/checkpoints/epoch-N/  per-epoch weights and training state (`callbacks.EpochCheckpoint`)
    <run_dir>/logs/              TensorBoard
    <run_dir>/export.json        where the run's SavedModel went (written once the export is complete)

config.json, model.keras and history.json are written together when a run
finishes, each under a temporary name first, then renamed one after the other,
so that they always describe the same model: a run that is killed or diverges
leaves the previous finished run's three files as they were.
"""

import datetime
import json
import os

from keras_vae.config import RUN_HYPERPARAMETERS, load_config, model_class
from keras_vae.errors import UserError
from keras_vae.files import write_json

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
MODEL_FILE = "model.keras"
EXPORT_FILE = "export.json"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
PRIOR_HISTORY_FILE = "prior_history.json"  # written by fit-prior; its presence means the prior is fitted
MIXTURE_REFIT_FILE = "prior_refit.json"  # fit-prior's EM refit of a mixture prior (the checkpoints predate it)
CONTRASTIVE_PRIOR_FILE = "prior_contrastive.json"  # fit-prior's contrastive prior of an nvae (likewise)
FIT_REFIT_FILE = "prior_refit_at_fit.json"  # the mixture refit `fit` made when training ended (--prior-refit)

# Settings that may change between the runs of one run directory: where
# things go and how fast they run, not what is trained.
RESUMABLE_CHANGES = {
    "epochs", "run_dir", "data_dir", "export", "export_dir", "export_name",
    "strategy", "cpu_replicas", "steps_per_execution", "jit_compile",
    "prior_refit",  # applied after training: the checkpoints never hold it
}


def default_run_dir(config):
    """runs/<dataset>-<model>-<time>."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dataset = os.path.splitext(os.path.basename(os.path.normpath(config.dataset)))[0]
    return os.path.join("runs", f"{dataset}-{config.model}-{stamp}")


def export_name(config, run_dir):
    """The model name an export of this run goes under: --export-name, else the run directory's name."""
    return config.export_name or os.path.basename(os.path.normpath(run_dir))


def check_same_run(run_dir, config, saved):
    """Refuses to resume a checkpoint made with a different configuration (`saved`, a dict).

    A setting that `saved` lacks was declared after the run was made: the run had its declared default.
    """
    wanted = config.to_dict()
    declared = {**RUN_HYPERPARAMETERS, **model_class(config.model).all_hyperparameters()}
    saved = {**{name: declared[name].default for name in set(wanted) - set(saved) if name in declared}, **saved}
    keys = (set(wanted) | set(saved)) - RESUMABLE_CHANGES
    changed = sorted(k for k in keys if saved.get(k) != wanted.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in changed)
        raise UserError(
            f"{run_dir} holds a run with a different configuration ({details}). "
            "Use another --run-dir, or --force to start that run over."
        )


def plain_history(history):
    """Keras's History.history as JSON numbers: {metric: [one float per epoch]}."""
    return {k: [float(v) for v in values] for k, values in history.items()}


def write_history(path, history):
    """Writes a history JSON atomically."""
    write_json(path, plain_history(history))


def save_finished_run(run_dir, model, history, config, refit=None):
    """model.keras, history.json and config.json of a finished run, and the record of the prior refit at
    its end when there was one (`refit`, in FIT_REFIT_FILE), staged and then renamed together."""
    from keras_vae.export import save_keras_model

    model_path = os.path.join(run_dir, MODEL_FILE)
    staged = {save_keras_model(model, model_path, replace=False): model_path}
    files = [(HISTORY_FILE, plain_history(history)), (CONFIG_FILE, config.to_dict())]
    for name, values in files + ([(FIT_REFIT_FILE, refit)] if refit else []):
        path = os.path.join(run_dir, name)
        staged[write_json(path, values, replace=False)] = path
    for temporary, path in staged.items():
        os.replace(temporary, path)
    stale = (PRIOR_HISTORY_FILE, MIXTURE_REFIT_FILE, CONTRASTIVE_PRIOR_FILE) + (() if refit else (FIT_REFIT_FILE,))
    for name in stale:  # a retrained model has no fitted or refitted prior but its own
        if os.path.exists(os.path.join(run_dir, name)):
            os.remove(os.path.join(run_dir, name))


def export_run(model, config):
    """Exports a finished run's model under its export name and records that the export completed."""
    from keras_vae.export import export_saved_model

    path = export_saved_model(model, config.export_dir, export_name(config, config.run_dir))
    write_json(os.path.join(config.run_dir, EXPORT_FILE), {"path": path})
    return path


def read_export_record(run_dir):
    """Where the run's export went, or None when it was never completed."""
    try:
        with open(os.path.join(run_dir, EXPORT_FILE)) as f:
            return json.load(f)["path"]
    except (OSError, ValueError, KeyError):
        return None


def remove_export_record(run_dir):
    try:
        os.remove(os.path.join(run_dir, EXPORT_FILE))
    except FileNotFoundError:
        pass


def finished_run_config(run_dir):
    """The FitConfig of a finished run directory, read without starting TensorFlow's devices (so that a
    strategy can still split them)."""
    if not os.path.isdir(run_dir):
        raise UserError(f"Run directory {run_dir} does not exist.")
    if not all(os.path.exists(os.path.join(run_dir, name)) for name in (CONFIG_FILE, MODEL_FILE)):
        raise UserError(
            f"{run_dir} holds no finished model: expected {CONFIG_FILE} and {MODEL_FILE} there "
            "(they are written when `keras-vae fit` completes)."
        )
    return load_config(os.path.join(run_dir, CONFIG_FILE))  # also registers the model classes with Keras


def load_run(run_dir):
    """(config, model) of a finished run directory, for export, evaluation and pictures."""
    import keras

    config = finished_run_config(run_dir)
    model_path = os.path.join(run_dir, MODEL_FILE)
    try:
        model = keras.saving.load_model(model_path)
    except Exception as error:  # noqa: BLE001 - any failure to read the file
        raise UserError(f"{model_path} cannot be loaded: {error}.") from None
    saved = model.get_config()
    differ = sorted(k for k, v in config.model_hyperparameters().items() if v is not None and saved.get(k) != v)
    if differ:
        raise UserError(f"{run_dir}'s {CONFIG_FILE} and {MODEL_FILE} describe different models ({', '.join(differ)} "
                        "differ): the files were changed by hand or by an interrupted older version. Train it again "
                        "with --force.")
    return config, model
