"""The run configuration: one dataclass that rebuilds a run and its model."""

import dataclasses
import json
from typing import Optional

from keras_vae.errors import UserError

LIKELIHOODS = ("bernoulli", "gaussian")
BINARIZATIONS = ("dynamic", "static", "none")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
JIT_CHOICES = ("auto", "on", "off")
POSTERIOR_SCALES = ("softplus", "exp")
LR_SCHEDULES = ("constant", "cosine")
PRIORS = ("normal", "mog", "vamp")
NOISES = ("gaussian", "masking")
STRATEGIES = ("auto", "one", "mirrored", "multi-worker")


@dataclasses.dataclass
class FitConfig:
    """Everything `keras-vae fit` needs; `config.json` in a run directory holds one.

    The command line's flags map one to one onto these fields (dashes for
    underscores), and `--config FILE.json` takes the same keys.
    """

    # Data.
    dataset: str = "sprites"
    data_dir: Optional[str] = None
    binarize: str = "dynamic"
    validation_split: float = 0.1
    # Model.
    model: str = "vae"
    architecture: str = "mlp"
    latent_dim: int = 16
    likelihood: str = "bernoulli"
    likelihood_scale: Optional[float] = None  # Gaussian only; None = learned.
    posterior_scale: str = "softplus"
    beta: float = 1.0
    # None: half the run's optimizer steps (measured on Fashion-MNIST, 10 epochs, 2 seeds: test
    # -log p(x) 0.5 nats below a 1000-step warm-up, 0.2 below warming up over the whole run).
    kl_warmup_steps: Optional[int] = None
    free_bits: float = 0.0
    prior: str = "normal"
    prior_components: int = 10
    # Model-specific (used by the models that name them).
    noise: str = "gaussian"  # dae: gaussian or masking corruption
    noise_level: float = 0.3  # dae: the Gaussian's std, or the masked fraction
    capacity_max: float = 25.0  # beta_vae: C rises to this many nats ...
    capacity_steps: int = 100000  # ... over this many steps
    iw_k: int = 5  # iwae: importance samples per example
    codebook_size: int = 512  # vq_vae: K codebook vectors ...
    codebook_dim: int = 16  # ... of D numbers each; the code map has latent_dim positions
    commitment: float = 0.25  # vq_vae: β of the commitment loss
    vq_ema: bool = False  # vq_vae: EMA codebook updates instead of the codebook loss
    # Optimization.
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    seed: int = 0
    precision: str = "float32"
    steps_per_execution: int = 1
    jit_compile: str = "auto"
    # Distribution.
    strategy: str = "auto"
    cpu_replicas: int = 0
    # Outputs.
    run_dir: Optional[str] = None
    export_dir: str = "saved_models"
    export_name: Optional[str] = None
    export: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self):
        positive = ("latent_dim", "epochs", "batch_size", "steps_per_execution", "prior_components", "iw_k",
                    "codebook_size", "codebook_dim")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(
                    f"{_flag(name)} must be a positive integer. Received: {name}={value!r}."
                )
        for name in ("beta", "free_bits", "learning_rate", "noise_level", "capacity_max", "commitment"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise UserError(
                    f"{_flag(name)} must be a non-negative number. Received: {name}={value!r}."
                )
        if self.learning_rate == 0:
            raise UserError("--learning-rate must be positive. Received: learning_rate=0.")
        if not isinstance(self.capacity_steps, int) or self.capacity_steps < 0:
            raise UserError(
                f"--capacity-steps must be a non-negative integer. Received: capacity_steps={self.capacity_steps!r}."
            )
        if self.noise == "masking" and not self.noise_level < 1:
            raise UserError(f"--noise-level is the masked fraction and must be below 1. Received: {self.noise_level!r}.")
        if self.kl_warmup_steps is not None and (
            not isinstance(self.kl_warmup_steps, int) or isinstance(self.kl_warmup_steps, bool)
            or self.kl_warmup_steps < 0
        ):
            raise UserError(
                "--kl-warmup-steps must be a non-negative integer. "
                f"Received: kl_warmup_steps={self.kl_warmup_steps!r}."
            )
        if not 0 < self.validation_split < 1:
            raise UserError(
                "--validation-split must lie strictly between 0 and 1. "
                f"Received: validation_split={self.validation_split!r}."
            )
        if self.likelihood_scale is not None and not self.likelihood_scale > 0:
            raise UserError(
                "--likelihood-scale must be positive (leave it out to learn the scale). "
                f"Received: likelihood_scale={self.likelihood_scale!r}."
            )
        if not isinstance(self.cpu_replicas, int) or self.cpu_replicas < 0:
            raise UserError(
                f"--cpu-replicas must be 0 or more. Received: cpu_replicas={self.cpu_replicas!r}."
            )
        for name, choices in (
            ("likelihood", LIKELIHOODS),
            ("posterior_scale", POSTERIOR_SCALES),
            ("lr_schedule", LR_SCHEDULES),
            ("prior", PRIORS),
            ("noise", NOISES),
            ("binarize", BINARIZATIONS),
            ("precision", PRECISIONS),
            ("jit_compile", JIT_CHOICES),
            ("strategy", STRATEGIES),
        ):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"{_flag(name)} must be one of {', '.join(choices)}. "
                    f"Received: {name}={getattr(self, name)!r}."
                )

    def warmup_steps(self, total_steps):
        """The KL warm-up in optimizer steps for a run of `total_steps`: as given, or half the run."""
        return self.kl_warmup_steps if self.kl_warmup_steps is not None else total_steps // 2

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="the configuration"):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"{source} has unknown keys: {', '.join(unknown)}. "
                f"Valid keys: {', '.join(sorted(known))}."
            )
        try:
            return cls(**values)
        except TypeError as error:
            raise UserError(f"{source} is not a valid configuration: {error}.") from None

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")


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


def _flag(name):
    return "--" + name.replace("_", "-")
