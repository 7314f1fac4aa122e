"""Settings that depend on the data: what `fit` uses for a dataset unless told otherwise.

The declared defaults (`keras_vae.config`, each model's `hyperparameters`)
were chosen on 28×28 Fashion-MNIST. A dataset whose best settings differ
names them here, chosen by measurement within the quickstart's budget
(`scripts/first_run.py`, README "Defaults that depend on the data"). The
user's own data (a `.npz` file or an image folder) gets the defaults of the
registered dataset nearest in kind: large images those of `sprites`, small
ones the declared defaults.

`fit` applies them with `FitConfig.with_defaults`: a flag or config-file
value always wins, and the run's `config.json` records the values used.
"""

from keras_vae.data.datasets import DATASETS

# {dataset: {setting: value}}.
DATASET_DEFAULTS = {
    "fashion_mnist": {},  # the declared defaults were measured on it
    "mnist": {},
    # scripts/first_run.py; benchmarks/FIRST_RUN.md has the runs that chose it.
    "sprites": {"architecture": "broadcast-64", "latent_dim": 10, "batch_size": 32, "precision": "auto",
                "prior": "mog", "prior_components": 100, "prior_refit": "aggregate", "beta": 0.5, "epochs": 12},
}
# The same images drawn from the whole grid, and the user's large images: sprites' network and prior, but the
# ELBO's own β = 1 (β = 0.5 was chosen by how sprites' first run looks; dsprites measures disentanglement) and
# the declared epochs (12 was sized to sprites' 20,000 images and the quickstart's budget).
LARGE_IMAGE_DEFAULTS = {name: value for name, value in DATASET_DEFAULTS["sprites"].items()
                        if name not in ("beta", "epochs")}
DATASET_DEFAULTS["dsprites"] = LARGE_IMAGE_DEFAULTS
SIGNAL_DEFAULTS = {"likelihood": "gaussian", "binarize": "none"}  # the user's 1-D signals [N, T, C]
# Recordings (fsdd, a WAV folder), by representation: spectrograms are real values, waveforms μ-law levels.
RECORDING_DEFAULTS = {
    "logmel": {**SIGNAL_DEFAULTS, "architecture": "conv1d", "batch_size": 32},
    "waveform": {**SIGNAL_DEFAULTS, "likelihood": "categorical", "architecture": "conv1d", "batch_size": 32},
}
LARGE_IMAGE = 48  # pixels per side from which the user's images take `sprites`' defaults


def defaults_for(name, image_shape, representation=None):
    """{setting: value} for a dataset: recordings' by `representation` (None: not recordings), a registered
    dataset's own row, else by image size."""
    if representation is not None:
        return dict(RECORDING_DEFAULTS[representation])
    if name in DATASETS:
        return dict(DATASET_DEFAULTS.get(name, {}))
    if len(image_shape) == 2:  # signals [T, C]: real values
        return dict(SIGNAL_DEFAULTS)
    height, width = image_shape[:2]
    if min(height, width) >= LARGE_IMAGE and height % 16 == 0 and width % 16 == 0:  # what conv-64 and broadcast-64 take
        return dict(LARGE_IMAGE_DEFAULTS)
    return {}


def defaults_table():
    """The README's table of the data's defaults (`python -m keras_vae.data.defaults` prints it)."""
    def flags(values):
        return ", ".join(f"`--{key.replace('_', '-')} {value}`" for key, value in values.items()) or "none"

    rows = ["| dataset | settings that differ from the declared defaults |", "|---|---|"]
    for name, values in sorted(DATASET_DEFAULTS.items()):
        rows.append(f"| {name} | {flags(values)} |")
    rows.append(f"| your images, at least {LARGE_IMAGE}×{LARGE_IMAGE} and sides divisible by 16 | as `dsprites` |")
    rows.append("| your images, smaller | none |")
    rows.append(f"| your signals [N, T] or [N, T, C] | {flags(SIGNAL_DEFAULTS)} |")
    for representation, values in RECORDING_DEFAULTS.items():
        rows.append(f"| recordings (fsdd, a WAV folder), `--representation {representation}` | {flags(values)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(defaults_table())
