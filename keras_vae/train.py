"""`fit`: the one library call behind `keras-vae fit`, and the pieces it is made of."""

import contextlib
import os
import shutil
import sys

import keras
import tensorflow as tf

from keras_vae import callbacks as kv_callbacks
from keras_vae import distribute, runs
from keras_vae.config import FitConfig, condition_of, model_class
from keras_vae.data import pipeline
from keras_vae.data.datasets import dataset_of
from keras_vae.data.defaults import defaults_for
from keras_vae.data.splits import fixed_binarization, held_out_name, labels_named, load_split, train_and_held_out
from keras_vae.errors import TrainingDiverged, UserError
from keras_vae.export import check_name, export_saved_model, save_keras_model
from keras_vae.models import build_model
from keras_vae.networks import ARCHITECTURES

OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamax": keras.optimizers.Adamax}  # config.OPTIMIZERS' classes
NUM_SUMMARY_IMAGES = 1000  # validation images TensorBoard's I(x; z) and active units read (the grids show 8)


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
    """(train pipeline, validation pipeline, (a few validation images, their labels or None, their padding
    masks or None), training-set size).

    With several replicas the validation set is cut to a multiple of their
    number: Keras averages the first batch over replicas before evaluating,
    which needs equal shards.
    """
    if config.batch_size % replicas:
        raise UserError(f"--batch-size is the global batch and must divide evenly over the {replicas} replicas. "
                        f"Received: batch_size={config.batch_size}.")
    condition = condition_of(config)
    (x_train, y_train, f_train, m_train), (x_val, y_val, f_val, m_val) = train_and_held_out(config, dataset)
    if condition:  # the labels the model reads
        y_train, y_val = (labels_named(condition, y, f, dataset.factor_names, f"dataset {config.dataset!r}")
                          for y, f in ((y_train, f_train), (y_val, f_val)))
    keep = len(x_val) - len(x_val) % replicas
    cut = (lambda a: None if a is None else a[:keep])
    x_val, y_val, m_val = fixed_binarization(config, x_val[:keep]), cut(y_val), cut(m_val)
    if config.binarize == "static":
        x_train = pipeline.binarize_once(x_train, config.seed)
    if condition and (y_train is None or y_val is None):
        raise UserError(
            f"--model {config.model} is conditional and needs labels, but the dataset {config.dataset!r} has none. "
            "Use a labelled dataset (mnist, fashion_mnist, sprites, fsdd, a .npz with y, or an image or WAV folder "
            "with one sub-folder per class)."
        )
    # Whole batches only (the remainder changes with every reshuffle): one batch
    # shape, so XLA compiles the step once instead of again for a ragged last batch.
    train = pipeline.make_pipeline(
        x_train, config.batch_size, y=y_train if condition else None,
        dynamic_binarization=config.binarize == "dynamic", shuffle=True, seed=config.seed,
        drop_remainder=len(x_train) >= config.batch_size, mask=m_train,
    )
    val = pipeline.make_pipeline(x_val, config.batch_size, y=y_val if condition else None, mask=m_val)
    summary = (pipeline.to_unit_float(x_val[:NUM_SUMMARY_IMAGES]),
               y_val[:NUM_SUMMARY_IMAGES] if condition else None, cut(m_val))
    return train, val, summary, len(x_train)


def condition_classes(config, dataset):
    """How many values the labels of a conditional model take (0 for the others)."""
    condition = condition_of(config)
    if not condition or condition == "label":
        return dataset.num_classes
    labels = labels_named(condition, dataset.y_train, dataset.factors_train, dataset.factor_names,
                          f"dataset {config.dataset!r}")
    return int(labels.max()) + 1


def check_signal_settings(config, dataset):
    """UserError when settings made for images meet 1-D signals [N, T, C] (real values, no pixels)."""
    values = config.to_dict()
    if not dataset.is_signal:
        if values.get("likelihood") == "categorical":
            raise UserError(f"--likelihood categorical scores values on 256 levels in [-1, 1] (μ-law waveforms); the "
                            f"dataset {config.dataset!r} holds images in [0, 1]: use bernoulli or gaussian.")
        return
    problems = []
    if not model_class(config.model).reads_signals:
        problems.append(f"--model {config.model} reads images only")
    if values["binarize"] != "none":
        problems.append(f"--binarize {values['binarize']} needs pixel intensities (use none)")
    if values.get("likelihood", "gaussian") == "bernoulli":
        problems.append("--likelihood bernoulli models binary pixels (use gaussian, or categorical for values on "
                        "256 levels in [-1, 1] such as μ-law waveforms)")
    if values.get("likelihood") == "logistic_mixture":
        problems.append("--likelihood logistic_mixture scores 8-bit pixel values")
    if values.get("decoder", "factorized") != "factorized":
        problems.append(f"--decoder {values['decoder']} draws image pixels in raster order")
    if values.get("dequantize", "none") != "none":
        problems.append(f"--dequantize {values['dequantize']} is for 8-bit images")
    if problems:
        raise UserError(f"The dataset {config.dataset!r} holds signals {list(dataset.image_shape)} [T, C], not images: "
                        + "; ".join(problems) + ".")


def with_data_defaults(config, dataset):
    """`config` with the data's defaults (`keras_vae.data.defaults`), then the model's own run settings
    (`run_defaults`, e.g. NVAE's optimizer), for the settings it was not given."""
    representation = dataset.audio.representation if dataset.audio is not None else None
    filled = config.with_defaults({**defaults_for(config.dataset, dataset.image_shape, representation),
                                   **model_run_defaults(config)})
    # A refit the data's defaults ask for applies to a `mog` prior only; one the user asks for must have it.
    if "prior_refit" in config.given and filled.prior_refit != "none" and filled.prior != "mog":
        raise UserError(f"--prior-refit {filled.prior_refit} refits a learned mixture: it needs --prior mog. "
                        f"Received: --prior {filled.prior}.")
    return filled


def model_run_defaults(config):
    """The model's own run settings. Its learning rate is its optimizer's: a run given another optimizer
    (NVAE with `--optimizer adam`) keeps the declared rate rather than Adamax's 1e-2."""
    defaults = dict(model_class(config.model).run_defaults)
    if "optimizer" in config.given and config.optimizer != defaults.get("optimizer", config.optimizer):
        defaults.pop("learning_rate", None)
    return defaults


def native_bfloat16():
    """Whether this machine computes bfloat16 natively: a GPU of compute capability 8.0 or later
    (Ampere on), else a CPU with AVX512-BF16 or AMX (where bf16 matmuls run several times faster)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
        return tuple(capability) >= (8, 0)
    flags = cpu_flags() or []
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_flags():
    """The CPU's feature flags as /proc/cpuinfo lists them, or None where it cannot be read."""
    flags = cpuinfo_field("flags")
    return None if flags is None else flags.split()


def cpuinfo_field(name):
    """The first value of the field `name` ("flags", "model name") in /proc/cpuinfo, or None where the file
    cannot be read or has no such field."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(name)), None)
    except OSError:
        return None


def resolve_precision(config):
    """`config` with `--precision auto` replaced by the policy this machine runs fastest."""
    if config.precision != "auto":
        return config
    return config.replace(precision="mixed_bfloat16" if native_bfloat16() else "float32")


def learning_rate(config, total_steps):
    """A constant rate, or a cosine decay to 0 over the whole run (Loshchilov & Hutter 2017), after a linear
    warm-up from 0 over `lr_warmup` of the run's steps."""
    warmup = int(config.lr_warmup * total_steps)
    if config.lr_schedule == "constant" and not warmup:
        return config.learning_rate
    floor = 1.0 if config.lr_schedule == "constant" else 0.0  # the fraction of the rate the decay ends at
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, max(1, total_steps), alpha=floor)
    return keras.optimizers.schedules.CosineDecay(0.0, max(1, total_steps - warmup), alpha=floor,
                                                  warmup_target=config.learning_rate, warmup_steps=warmup)


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


def resume_point(config, run_dir, force, log):
    """(checkpoint state to resume from or None, True when the run is already complete)."""
    resume_from = None if force else kv_callbacks.latest_checkpoint(os.path.join(run_dir, runs.CHECKPOINT_DIR))
    if not resume_from:
        return None, False
    state = dict(kv_callbacks.read_checkpoint_state(resume_from), path=resume_from)
    runs.check_same_run(run_dir, config, state["config"])
    planned = state["config"]["epochs"]
    if config.lr_schedule == "cosine" and config.epochs > planned:
        raise UserError(
            f"{run_dir} follows a cosine learning-rate schedule that reaches 0 at epoch {planned}: training it "
            f"to epoch {config.epochs} would not move the weights. Start a new run (another --run-dir, or "
            "--force) with the --epochs you want."
        )
    if state["epoch"] >= config.epochs and os.path.exists(os.path.join(run_dir, runs.MODEL_FILE)):
        log(f"{run_dir} is already complete ({state['epoch']} epochs): nothing to train, its saved model stands "
            "(--force starts it over; a larger --epochs trains it further).")
        return state, True
    if os.path.exists(os.path.join(run_dir, runs.PRIOR_HISTORY_FILE)):
        raise UserError(
            f"{run_dir}'s code prior was fitted (keras-vae fit-prior) to the codes its model makes now: training "
            f"the model further to epoch {config.epochs} would leave that prior stale. Start a new run (another "
            "--run-dir), or --force to train this one over (its prior is then dropped and fit-prior runs again).")
    for record, what in ((runs.MIXTURE_REFIT_FILE, "mixture prior was refitted (keras-vae fit-prior)"),
                         (runs.CONTRASTIVE_PRIOR_FILE, "prior was given a contrastive part (keras-vae fit-prior "
                                                       "--method contrastive)")):
        if os.path.exists(os.path.join(run_dir, record)):
            raise UserError(
                f"{run_dir}'s {what} after its last checkpoint: training it further to epoch {config.epochs} would "
                "resume from that checkpoint and lose it. Start a new run (another --run-dir), or --force to train "
                "this one over (and fit its prior again).")
    return state, False


def finish_export(config, state, log):
    """A finished run whose export never completed (killed, disk full) is exported now."""
    result = {"run_dir": config.run_dir, "history": state["history"], "export_path": None, "complete": True}
    if config.export and runs.read_export_record(config.run_dir) is None:
        result["export_path"] = runs.export_run(runs.load_run(config.run_dir)[1], config)
        log(f"Its export had not completed; exported it now to {result['export_path']}.")
    return result


def build_optimizer(config, total_steps):
    """The configured optimizer, with its learning-rate schedule and, when set, its ε and the moving average of
    the weights that Keras's `fit` puts in their place at its end (`finalize_variable_values`)."""
    extra = {} if config.optimizer_epsilon is None else {"epsilon": config.optimizer_epsilon}
    if config.weight_ema:
        extra.update(use_ema=True, ema_momentum=config.weight_ema)
    return OPTIMIZERS[config.optimizer](learning_rate(config, total_steps), **extra)


def build_compiled_model(config, dataset, strategy, total_steps):
    """The model `config` describes, built and compiled in the strategy's scope and dtype policy."""
    with dtype_policy(config.precision), strategy.scope():
        model = build_model(config, dataset.image_shape, condition_classes(config, dataset), total_steps)
        model.compile(
            optimizer=build_optimizer(config, total_steps),
            steps_per_execution=config.steps_per_execution,
            jit_compile=jit_setting(config.jit_compile, model, strategy),
        )
    return model


def save_outputs(model, config, history, strategy, stopwatch=None, refit=None):
    """model.keras, history.json and config.json (together, so that they always describe one model; with
    the record of a prior refitted at the end of training, `refit`, when there is one), then the SavedModel
    export; returns the export path (chief) or None.

    Every worker saves (a save may need all of them), the others into scratch.
    """
    broken = kv_callbacks.non_finite_weights(model)
    if broken:
        raise TrainingDiverged(f"Training diverged: the weights {', '.join(broken[:3])} are not finite. "
                               "Nothing was saved or exported.")
    chief = distribute.is_chief(strategy)
    if not chief:
        scratch = distribute.worker_scratch(config.run_dir, strategy)
        save_keras_model(model, os.path.join(scratch, runs.MODEL_FILE))
        if config.export:
            export_saved_model(model, os.path.join(scratch, "export"), "scratch")
            shutil.rmtree(os.path.join(scratch, "export"), ignore_errors=True)
        return None
    stopwatch = stopwatch or kv_callbacks.Stopwatch()
    runs.remove_export_record(config.run_dir)  # the model about to be saved has not been exported yet
    with stopwatch("save"):
        runs.save_finished_run(config.run_dir, model, history, config, refit)
    if not config.export:
        return None
    with stopwatch("export"):
        return runs.export_run(model, config)


def restore(model, state, log):
    """(first epoch to train, history so far) from a checkpoint state, or from scratch."""
    if not state:
        return 0, {}
    kv_callbacks.restore_checkpoint(model, state["path"])
    log(f"Resuming from epoch {state['epoch']} ({state['path']}).")
    return state["epoch"], state["history"]


def fit(config, verbose="auto", force=False, log=print, extra_callbacks=()):
    """Trains the model `config` describes and exports it.

    Writes the run directory (see `keras_vae.runs`) and a SavedModel version
    under `config.export_dir`. Re-running a run directory resumes it from its
    last complete epoch; a finished run is not trained again unless `force`
    (which starts over).

    Args:
        config: a `FitConfig` (not changed).
        verbose: Keras's progress-bar setting; "auto": a bar on a terminal, one line per epoch elsewhere.
        force: start the run directory over instead of resuming it.
        log: where one-line messages go.
        extra_callbacks: more Keras callbacks (benchmarks use this to time epochs).

    Returns:
        dict with `run_dir`, `history`, `validation` (the saved model's figures on the held-out split:
        the last epoch's, or the averaged weights' under `--weight-ema`), `val_elbo`, `split`, `export_path`,
        `timings` (seconds per phase: data, build, train steps, validation,
        summaries, checkpoints, other, save, export), `epochs_trained` (by this call: fewer than the
        run's when it resumed) and `complete` (True when the run had already finished; then only
        `run_dir` and `complete` are certain).

    Raises:
        UserError: for bad configuration or data.
        TrainingDiverged: when the loss becomes NaN (nothing is exported).
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"fit() takes a FitConfig. Received: {type(config).__name__}.")
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    if config.strategy == "multi-worker" and not config.run_dir:
        raise UserError("--strategy multi-worker needs --run-dir: every worker must name the same folder.")
    if "architecture" in config.model_hyperparameters():  # an unknown one fails before any data is loaded
        ARCHITECTURES.get(config.architecture)
    # The run's name depends on the dataset and model only, which no data default changes.
    config = config.replace(run_dir=config.run_dir or runs.default_run_dir(config))
    run_dir, chief = config.run_dir, distribute.is_chief(strategy)
    if config.export:
        check_name(runs.export_name(config, run_dir))  # before any work, not after training
    stopwatch = kv_callbacks.Stopwatch()
    with stopwatch("data"):
        dataset = dataset_of(config)
    config = resolve_precision(with_data_defaults(config, dataset))
    check_signal_settings(config, dataset)
    state, complete = resume_point(config, run_dir, force, log)
    if complete:
        return finish_export(config, state, log) if chief else {"run_dir": run_dir, "complete": True}

    keras.utils.set_random_seed(config.seed)
    with stopwatch("data"):
        train_data, val_data, summary_images, num_train = prepare_data(config, dataset, strategy.num_replicas_in_sync)
    os.makedirs(run_dir, exist_ok=True)
    with stopwatch("build"):
        # Schedules (KL warm-up, cosine decay) keep the length of the run that started them.
        schedule_steps = (state.get("schedule_steps") if state else None) or \
            max(1, num_train // config.batch_size) * config.epochs
        model = build_compiled_model(config, dataset, strategy, schedule_steps)
        initial_epoch, history = restore(model, state, log)

    checkpoint_dir = os.path.join(run_dir, runs.CHECKPOINT_DIR)
    # Other workers keep their own checkpoints in a scratch folder of their own.
    own_checkpoint_dir = checkpoint_dir if chief else distribute.worker_scratch(run_dir, strategy)
    checkpointer = kv_callbacks.EpochCheckpoint(own_checkpoint_dir, config.to_dict(), history,
                                                extra_state={"schedule_steps": schedule_steps}, stopwatch=stopwatch)
    # The NaN guard reads each step's loss, which waits for the step to finish: the timer comes after it.
    phases = [kv_callbacks.AggressiveEncoder(*summary_images[:2])] if getattr(model, "aggressive_encoder", False) else []
    callbacks = [kv_callbacks.StopOnNaN(checkpoint_dir), kv_callbacks.PhaseTimer(stopwatch), *phases, checkpointer,
                 *extra_callbacks]
    if chief:
        callbacks.append(kv_callbacks.Summaries(os.path.join(run_dir, runs.LOG_DIR), *summary_images[:2],
                                                model.metric_names(), config.seed, stopwatch=stopwatch,
                                                audio=dataset.audio, masks=summary_images[2]))
    verbose = (1 if sys.stdout.isatty() else 2) if verbose == "auto" else verbose  # off a terminal: a line an epoch
    if initial_epoch < config.epochs:
        with stopwatch("model.fit"):
            model.fit(train_data, validation_data=val_data, epochs=config.epochs, initial_epoch=initial_epoch,
                      callbacks=callbacks, verbose=verbose, shuffle=False)  # the pipeline shuffles, seeded
    history = checkpointer.history
    validation = final_validation(model, config, history, val_data, stopwatch, log)
    model, refit = refit_prior(model, config, dataset, stopwatch, log)
    return {"run_dir": run_dir, "history": history, "complete": False, "split": held_out_name(dataset),
            "epochs_trained": max(0, config.epochs - initial_epoch),  # by this call: fewer when it resumed
            "validation": validation, "val_elbo": validation.get("elbo"), "prior_refit": refit,
            "export_path": save_outputs(model, config, history, strategy, stopwatch, refit),
            "timings": phase_seconds(stopwatch)}  # after the export, which it times


def final_validation(model, config, history, val_data, stopwatch, log):
    """The held-out figures of the model that is saved: the last epoch's, or under `--weight-ema` those of the
    moving average of the weights, which this puts in their place as Keras's `fit` does at its end (again here,
    so that a run resumed after its last epoch is saved averaged too); the history keeps the raw weights'."""
    if not config.weight_ema:
        return {key[4:]: values[-1] for key, values in history.items() if key.startswith("val_") and values}
    model.optimizer.finalize_variable_values(model.trainable_variables)
    if val_data is None:
        return {}
    with stopwatch("validation"):
        validation = model.evaluate(val_data, verbose=0, return_dict=True)
    log(f"Weights replaced by their moving average (momentum {config.weight_ema}).")
    return validation


def refit_prior(model, config, dataset, stopwatch, log):
    """Once training ends, a `--prior mog` model's `prior_refit` ("em" or "aggregate"): its mixture refitted
    to the training split's codes (`code_prior.refit_mixture_prior`), before the model is saved and exported.
    Returns (the model, refitted or not, and the refit's record, or None when there is none). The checkpoints
    keep the trained mixture, so a run resumed to more epochs refits again at its end."""
    method = getattr(model, "prior_refit", "none")
    if method == "none" or getattr(model, "prior_name", None) != "mog" or kv_callbacks.non_finite_weights(model):
        return model, None  # (a diverged model is refused by save_outputs)
    from keras_vae.code_prior import refit_mixture_prior  # here: it needs TFP, which train's importers may lack

    with stopwatch("prior refit"):
        train, held_out = (load_split(config, split, dataset) for split in ("train", "test"))
        model, record = refit_mixture_prior(model, train, held_out, config.seed, method)
    if record["refitted"]:
        log(f"Refitted the mixture prior ({method}, {record['components']} components) to {record['codes']} "
            f"training codes: {held_out_name(dataset)} ELBO {record['test_elbo_before']:.2f} -> "
            f"{record['test_elbo_after']:.2f} (fixed noise).")
    else:
        log(f"Kept the trained mixture prior: held-out codes are likelier under it than under its {method} refit.")
    return model, record


def phase_seconds(stopwatch):
    """Seconds per phase; `other` is what model.fit spent outside the timed steps and callbacks
    (the input pipeline's waits, progress output, Keras's own bookkeeping)."""
    seconds = dict(stopwatch.seconds)
    inside = sum(seconds.get(p, 0.0) for p in ("train steps", "validation", "summaries", "checkpoints"))
    seconds["other"] = max(0.0, seconds.pop("model.fit", 0.0) - inside)
    return {phase: round(value, 3) for phase, value in seconds.items()}
