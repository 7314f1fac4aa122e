"""The run configuration: `FitConfig`, built from declared hyperparameters.

A configuration holds the run-level settings declared here (data,
optimization, distribution, outputs) plus the hyperparameters that the
chosen model declares (`Model.hyperparameters`). A setting that the chosen
model does not use is refused, naming the models that do. `config.json` in a
run directory is `to_dict()` of the configuration that trained it, and
`--config FILE.json` takes the same keys.
"""

import json

from keras_vae.errors import UserError
from keras_vae.files import write_json
from keras_vae.hparams import Hyperparameter as H
from keras_vae.hparams import by_name

BINARIZATIONS = ("dynamic", "static", "none")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
JIT_CHOICES = ("auto", "on", "off")
LR_SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adam", "adamax")
REFIT_METHODS = ("em", "aggregate")  # how a trained `mog` mixture prior is refitted (keras_vae.code_prior)
PRIOR_FIT_METHODS = (*REFIT_METHODS, "contrastive")  # fit-prior's: the refits and an nvae's contrastive prior
STRATEGIES = ("auto", "one", "mirrored", "multi-worker")
MAX_SEED = 2**31 - 1
REPRESENTATIONS = ("logmel", "waveform")  # what recordings become (`keras_vae.audio.AudioFormat`)

# (section, hyperparameters): the settings of every run, whatever its model.
RUN_SECTIONS = (
    ("data", (
        H("dataset", str, "sprites", "A registered dataset (see `keras-vae datasets`) or a path to a .npz file "
          "or image folder."),
        H("data_dir", str, None, "Folder with the dataset's files (IDX .gz or Keras .npz); also "
          "KERAS_VAE_DATA_DIR.", nullable=True),
        H("binarize", str, "dynamic", "Binarization of the data: resampled every batch, drawn once, or none.",
          choices=BINARIZATIONS, reference="Salakhutdinov & Murray 2008"),
        H("representation", str, "logmel", "What recordings (fsdd, a WAV folder) become: log-mel spectrograms "
          "[frames, 64] or the μ-law waveform [samples, 1]; other data ignore it.", choices=REPRESENTATIONS),
        H("validation_split", float, 0.1, "Held-out fraction when the dataset has no test split.",
          minimum=0, maximum=1, open_minimum=True, open_maximum=True),
    )),
    ("model", (
        H("model", str, "vae", "A registered model (see `keras-vae models`)."),
    )),
    ("optimization", (
        H("epochs", int, 10, "Passes over the training set.", minimum=1),
        H("batch_size", int, 128, "Global batch size (split over the replicas).", minimum=1),
        H("optimizer", str, "adam", "Adam, or Adamax (its infinity-norm variant, NVAE's choice).", choices=OPTIMIZERS,
          reference="Kingma & Ba 2015"),
        H("learning_rate", float, 1e-3, "The optimizer's learning rate.", minimum=0, open_minimum=True),
        H("optimizer_epsilon", float, None, "The optimizer's ε, added to the denominator of its step (default: "
          "Keras's, 1e-7). The official NVAE code's Adamax uses 1e-3.", minimum=0, open_minimum=True,
          nullable=True),
        H("weight_ema", float, 0.0, "Momentum of an exponential moving average of the weights, which replaces "
          "them when training ends (0: none; 0.999 averages about the last thousand steps). Batch-norm statistics are "
          "not averaged.", minimum=0, maximum=1,
          open_maximum=True, reference="Polyak & Juditsky 1992"),
        H("lr_schedule", str, "constant", "constant, or cosine decay to 0 over the run.", choices=LR_SCHEDULES,
          reference="Loshchilov & Hutter 2017"),
        H("lr_warmup", float, 0.0, "Fraction of the run's steps over which the learning rate rises linearly from "
          "0 before its schedule.", minimum=0, maximum=1, open_maximum=True, reference="Goyal et al. 2017"),
        H("seed", int, 0, "Seeds weights, data order, binarization and noise.", minimum=0, maximum=MAX_SEED),
        H("precision", str, "float32", "Keras dtype policy; distributions and losses stay float32. auto: "
          "mixed_bfloat16 where the hardware computes bfloat16 natively (CPUs with AVX512-BF16 or AMX, GPUs of "
          "compute capability 8.0 or later), float32 elsewhere; the run records the one it used.",
          choices=PRECISIONS),
        H("steps_per_execution", int, 1, "Training steps per tf.function call.", minimum=1),
        H("jit_compile", str, "auto", "XLA: auto (on for conv-free nets on one CPU device), on or off.",
          choices=JIT_CHOICES),
    )),
    ("distribution", (
        H("strategy", str, "auto", "tf.distribute strategy.", choices=STRATEGIES),
        H("cpu_replicas", int, 0, "Split the CPU into N logical devices for mirrored training (0: don't).",
          minimum=0),
    )),
    ("outputs", (
        H("run_dir", str, None, "Where checkpoints, logs and history go (default: runs/<dataset>-<model>-<time>).",
          nullable=True),
        H("export_dir", str, "saved_models", "Where the SavedModel goes."),
        H("export_name", str, None, "Model name under the export dir (default: the run directory's name).",
          nullable=True),
        H("export", bool, True, "Export a SavedModel at the end."),
    )),
)
RUN_HYPERPARAMETERS = by_name(h for _, section in RUN_SECTIONS for h in section)


def model_class(name):
    from keras_vae.models import get_model_class  # the model registry imports TensorFlow: only when needed

    return get_model_class(RUN_HYPERPARAMETERS["model"].check(name))


def condition_of(config):
    """The labels the configured model is conditioned on: "label" (a cvae's y), a factor's name (`vq_vae
    --condition speaker`), or None for an unconditional model."""
    if model_class(config.model).uses_labels is True:
        return "label"
    condition = config.to_dict().get("condition", "none")
    return None if condition == "none" else condition


def users_of(name):
    """The registered models that declare hyperparameter `name`."""
    from keras_vae.models import get_model_class, model_names

    return [m for m in model_names() if name in get_model_class(m).all_hyperparameters()]


def check_combination(values):
    """UserError for settings that are valid alone but not together."""
    if values.get("dequantize", "none") != "none" and (values["likelihood"] != "gaussian" or values["binarize"] != "none"):
        raise UserError(f"--dequantize {values['dequantize']} turns 8-bit images into a density's domain: it needs "
                        f"--likelihood gaussian and --binarize none. Received: --likelihood {values['likelihood']}, "
                        f"--binarize {values['binarize']}.")
    if values.get("likelihood") == "logistic_mixture" and values["binarize"] != "none":
        raise UserError("--likelihood logistic_mixture scores 8-bit values: it needs --binarize none. Received: "
                        f"--binarize {values['binarize']}.")
    if values.get("aggressive_encoder") and values["steps_per_execution"] != 1:
        raise UserError("--aggressive-encoder chooses the phase of every step: it needs --steps-per-execution 1. "
                        f"Received: --steps-per-execution {values['steps_per_execution']}.")
    if values.get("decoder") == "pixelcnn" and (values["likelihood"] != "bernoulli" or values["binarize"] == "none"):
        raise UserError(f"--decoder pixelcnn models binary pixels: it needs --likelihood bernoulli and binarized data "
                        f"(--binarize dynamic or static). Received: --likelihood {values['likelihood']}, "
                        f"--binarize {values['binarize']}.")


class FitConfig:
    """Everything `keras-vae fit` needs: the run's settings and its model's hyperparameters.

    Args:
        **values: settings by name; the ones left out take their declared
            defaults. `model` chooses which model hyperparameters exist.

    Raises:
        UserError: an unknown key, a key the model does not use (naming the
            models that use it), or a value of the wrong type or range.

    Example:
        >>> config = FitConfig(model="beta_vae", capacity_max=10.0)
        >>> config.capacity_max, config.epochs
        (10.0, 10)
        >>> config.replace(epochs=2).epochs
        2
    """

    def __init__(self, source="The configuration", **values):
        cls = model_class(values.get("model", RUN_HYPERPARAMETERS["model"].default))
        declared = {**RUN_HYPERPARAMETERS, **cls.all_hyperparameters()}
        unknown = sorted(set(values) - set(declared))
        for key in unknown:
            users = users_of(key)
            if users:
                raise UserError(
                    f"--{key.replace('_', '-')} is not used by the {cls.model_name} model; it is a hyperparameter of "
                    f"{', '.join(users)}. Leave it out, or choose one of those models."
                )
        if unknown:
            raise UserError(f"{source} has unknown keys: {', '.join(unknown)}. Valid keys for the "
                            f"{cls.model_name} model: {', '.join(sorted(declared))}.")
        checked = {name: h.check(values.get(name, h.default)) for name, h in declared.items()}
        check_combination(checked)
        object.__setattr__(self, "_values", checked)
        object.__setattr__(self, "_model_names", tuple(cls.all_hyperparameters()))
        object.__setattr__(self, "_given", frozenset(values))

    def __getattr__(self, name):
        values = self.__dict__["_values"]
        if name in values:
            return values[name]
        raise AttributeError(f"FitConfig of a {values['model']} model has no setting {name!r}.")

    def __setattr__(self, name, value):
        raise AttributeError("FitConfig is immutable: use config.replace(name=value).")

    def __eq__(self, other):
        return isinstance(other, FitConfig) and self._values == other._values

    def __repr__(self):
        return "FitConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def replace(self, **changes):
        """A copy with `changes` applied (validated like any configuration)."""
        config = FitConfig(**{**self._values, **changes})
        object.__setattr__(config, "_given", self._given | frozenset(changes))
        return config

    @property
    def given(self):
        """The settings set explicitly (by a flag, a config file or `replace`), not left to a default."""
        return self._given

    def with_defaults(self, defaults):
        """A copy in which the settings left to their declared defaults take `defaults` instead.

        Used for the data's defaults (`keras_vae.data.defaults`). A setting is
        changed only when it was not given and the model takes it as declared
        for all models (a model that declares its own meaning or default for a
        setting, such as `vq_vae`'s `latent_dim`, keeps it).
        """
        general = general_declarations()
        declared = {**RUN_HYPERPARAMETERS, **model_class(self.model).all_hyperparameters()}
        applied = {name: value for name, value in defaults.items()
                   if name not in self._given and name in declared and declared[name] is general.get(name)}
        return self.replace(**applied)

    def model_hyperparameters(self):
        """{name: value} of the hyperparameters the model declares: its constructor arguments."""
        return {name: self._values[name] for name in self._model_names}

    def to_dict(self):
        return dict(self._values)

    @classmethod
    def from_dict(cls, values, source="The configuration"):
        return cls(source=source, **values)

    def save(self, path):
        """Writes the configuration as JSON, atomically (a temporary file, then a rename)."""
        write_json(path, self.to_dict())


def read_json_object(path):
    """Reads a JSON file that must hold one object; any failure is a UserError."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError:
        raise UserError(f"Config file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"Config file {path} is not valid JSON: {error}.") from None
    if not isinstance(values, dict):
        raise UserError(
            f"Config file {path} must hold a JSON object of flag names to values; "
            f"it holds a {type(values).__name__}."
        )
    return {key.replace("-", "_"): value for key, value in values.items()}


def load_config(path):
    return FitConfig.from_dict(read_json_object(path), source=f"Config file {path}")


def general_declarations():
    """{name: Hyperparameter} as the most general model declares each (the run's settings too)."""
    from keras_vae.models import get_model_class, model_names

    found = {}  # name -> (depth of the declaring model class, Hyperparameter)
    for model in model_names():
        cls = get_model_class(model)
        for h in cls.all_hyperparameters().values():
            if h.name not in found or len(cls.__mro__) < found[h.name][0]:
                found[h.name] = (len(cls.__mro__), h)
    return {**RUN_HYPERPARAMETERS, **{name: h for name, (_, h) in found.items()}}


def flag_rows():
    """(Hyperparameter, where it applies) for every setting: the run's, then each model's.

    A hyperparameter that several models declare is listed once, as its most
    general model declares it; a model that redeclares its default is named
    with that default.
    """
    from keras_vae.models import get_model_class, model_names

    rows = [(h, "all models") for h in RUN_HYPERPARAMETERS.values()]
    general = general_declarations()
    declarations = {}  # name -> [(model, Hyperparameter)]
    for model in model_names():
        for h in get_model_class(model).all_hyperparameters().values():
            declarations.setdefault(h.name, []).append((model, h))
    for name, found in declarations.items():
        users = [model if h.default == general[name].default else f"{model} (default {h.default})"
                 for model, h in found]
        rows.append((general[name], "all models" if len(found) == len(model_names()) else ", ".join(users)))
    return rows


if __name__ == "__main__":  # python -m keras_vae.config: the README's flag table
    from keras_vae.hparams import flag_table

    print(flag_table(flag_rows()))
