"""Which images a run trains on and which it is measured on: the one rule, used by training and evaluation.

The held-out split is the dataset's test split when it has one, else a
seeded `validation_split` slice of the training images. Binarized runs
measure on one fixed binarization of it, drawn with seed + 1, so that
epochs compare and `keras-vae evaluate` reproduces training's validation
numbers.
"""

import dataclasses
from typing import Optional

import numpy as np

from keras_vae.data import pipeline
from keras_vae.data.datasets import dataset_of
from keras_vae.errors import UserError


@dataclasses.dataclass
class Split:
    """The images of one split as the model is measured on them (binarized the same way)."""

    name: str
    x: np.ndarray  # float32 [N, H, W, C] in [0, 1], or signals [N, T, C]
    y: Optional[np.ndarray] = None
    factors: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None  # float32 [N, T]: the real steps of fixed-length clips
    factor_names: tuple = ()
    audio: Optional[object] = None  # recordings: their `keras_vae.audio.AudioFormat`

    def head(self, count):
        """The first `count` examples, with their labels, factors and masks."""
        return self.rows(0, count)

    def rows(self, start, stop):
        """Examples start..stop-1, with their labels, factors and masks."""
        cut = (lambda a: None if a is None else a[start:stop])
        return Split(self.name, cut(self.x), cut(self.y), cut(self.factors), cut(self.mask), self.factor_names,
                     self.audio)

    def labels(self, name="label"):
        """The labels [N] called `name`: "label" is `y`, any other name a factor (e.g. "speaker")."""
        return labels_named(name, self.y, self.factors, self.factor_names, self.name)


def labels_named(name, y, factors, factor_names, where="dataset"):
    """`y` for "label", else the factor column called `name`; a UserError naming the labels there are."""
    if name == "label":
        return y
    if name not in factor_names:
        raise UserError(f"The {where} has no labels called {name!r}; it has: "
                        + ", ".join(("label",) + tuple(factor_names)) + ".")
    return factors[:, list(factor_names).index(name)]


def train_and_held_out(config, dataset):
    """((x, y, factors, mask) to train on, the same held out), as stored (before binarization)."""
    if dataset.x_test is not None:
        return ((dataset.x_train, dataset.y_train, dataset.factors_train, dataset.mask_train),
                (dataset.x_test, dataset.y_test, dataset.factors_test, dataset.mask_test))
    order = pipeline.validation_order(len(dataset.x_train), config.validation_split, config.seed)
    return tuple(tuple(None if a is None else a[rows] for a in (dataset.x_train, dataset.y_train,
                                                                 dataset.factors_train, dataset.mask_train))
                 for rows in order)


def fixed_binarization(config, x):
    """x as it is measured: binarized once with seed + 1 unless the run does not binarize."""
    return pipeline.binarize_once(x, config.seed + 1) if config.binarize != "none" else x


def held_out_name(dataset):
    return "test" if dataset.x_test is not None else "validation"


def load_split(config, split="test", dataset=None):
    """The `split` ("test": the held-out images, or "train") of a run's dataset, as it is measured."""
    if split not in ("test", "train"):
        raise UserError(f"--split must be test or train. Received: split={split!r}.")
    dataset = dataset or dataset_of(config)
    if dataset.is_signal and config.binarize != "none":  # a configuration without the data's defaults
        raise UserError(f"The dataset {config.dataset!r} holds signals, which are not binarized; this configuration "
                        f"says --binarize {config.binarize}. Use the run's own configuration (keras_vae.runs.load_run) "
                        "or binarize='none'.")
    train, held_out = train_and_held_out(config, dataset)
    x, y, factors, mask = held_out if split == "test" else train
    return Split(split, pipeline.to_unit_float(fixed_binarization(config, x)), y, factors, mask,
                 dataset.factor_names, dataset.audio)


def batches(array, batch_size):
    """Consecutive slices of `array` of at most `batch_size` rows."""
    for start in range(0, len(array), batch_size):
        yield array[start : start + batch_size]
