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
from keras_vae.data.datasets import load_dataset
from keras_vae.errors import UserError


@dataclasses.dataclass
class Split:
    """The images of one split as the model is measured on them (binarized the same way)."""

    name: str
    x: np.ndarray  # float32 [N, H, W, C] in [0, 1]
    y: Optional[np.ndarray] = None
    factors: Optional[np.ndarray] = None

    def head(self, count):
        """The first `count` examples, with their labels and factors."""
        cut = (lambda a: None if a is None else a[:count])
        return Split(self.name, self.x[:count], cut(self.y), cut(self.factors))


def train_and_held_out(config, dataset):
    """((x, y, factors) to train on, (x, y, factors) held out), as stored (before binarization)."""
    if dataset.x_test is not None:
        return ((dataset.x_train, dataset.y_train, dataset.factors_train),
                (dataset.x_test, dataset.y_test, dataset.factors_test))
    x_train, y_train, x_val, y_val = pipeline.split_validation(
        dataset.x_train, dataset.y_train, config.validation_split, config.seed)
    return (x_train, y_train, None), (x_val, y_val, None)


def fixed_binarization(config, x):
    """x as it is measured: binarized once with seed + 1 unless the run does not binarize."""
    return pipeline.binarize_once(x, config.seed + 1) if config.binarize != "none" else x


def held_out_name(dataset):
    return "test" if dataset.x_test is not None else "validation"


def load_split(config, split="test", dataset=None):
    """The `split` ("test": the held-out images, or "train") of a run's dataset, as it is measured."""
    if split not in ("test", "train"):
        raise UserError(f"--split must be test or train. Received: split={split!r}.")
    dataset = dataset or load_dataset(config.dataset, config.data_dir, config.seed)
    train, held_out = train_and_held_out(config, dataset)
    x, y, factors = held_out if split == "test" else train
    return Split(split, pipeline.to_unit_float(fixed_binarization(config, x)), y, factors)


def batches(array, batch_size):
    """Consecutive slices of `array` of at most `batch_size` rows."""
    for start in range(0, len(array), batch_size):
        yield array[start : start + batch_size]
