"""dSprites as a ground-truth source: every combination of its factors, and the image of any of them.

dSprites (Matthey et al. 2017) is the full grid of 3 shapes × 6 scales ×
40 orientations × 32 × 32 positions, 737,280 images of 64×64. The
disentanglement metrics (`keras_vae.disentanglement`) draw from the whole
grid, often with one factor held fixed, so a source answers two questions:
which factor combinations to draw (`sample_factors`) and what they look like
(`observations`).

The images come from the original `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`
when it is in the data folder (its single colour factor dropped), and are
otherwise rendered in-process by `keras_vae.data.sprites` (same factors and
grid; the shapes are drawn by their equations, so they differ from the
original bitmaps in detail).

The training split is a seeded sample of the grid, not all of it: the full
grid is 3 GB as bytes and three times that again as the float batches a
run's evaluation makes, more than a 24 GB machine holds beside training.
`NUM_TRAIN` images cover 13.6% of the grid; the test split is `NUM_TEST`
other grid points.

References:
    Matthey, Higgins, Hassabis & Lerchner (2017). dSprites: Disentanglement
        testing Sprites dataset. https://github.com/deepmind/dsprites-dataset
"""

import math
import os

import numpy as np

from keras_vae.data import sprites
from keras_vae.errors import UserError

NPZ_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
FACTOR_SIZES = sprites.FACTOR_SIZES  # shape, scale, orientation, x, y
NUM_TRAIN = 100_000
NUM_TEST = 10_000


class FactorImages:
    """Every combination of `factor_sizes` and its image, indexed in row-major order (the npz's order).

    Args:
        factor_sizes: values per factor, e.g. (3, 6, 40, 32, 32).
        observe: factor indices [n, K] -> uint8 images [n, H, W, C].
    """

    def __init__(self, factor_sizes, observe):
        self.factor_sizes = tuple(int(n) for n in factor_sizes)
        self.num_images = math.prod(self.factor_sizes)
        self._observe = observe

    def sample_factors(self, num, rng):
        """`num` factor combinations drawn uniformly, [num, K] int32."""
        return np.stack([rng.integers(0, n, num) for n in self.factor_sizes], axis=1).astype(np.int32)

    def observations(self, factors):
        """The images of factor indices [n, K]: uint8 [n, H, W, C]."""
        factors = np.asarray(factors, np.int64)
        if factors.ndim != 2 or factors.shape[1] != len(self.factor_sizes) or (factors < 0).any() or (
                factors >= np.asarray(self.factor_sizes)).any():
            raise ValueError(f"Factors must be [n, {len(self.factor_sizes)}] indices below {self.factor_sizes}. "
                             f"Received: array of shape {factors.shape}.")
        return self._observe(factors)

    def index_of(self, factors):
        """The row-major grid index of factor indices [n, K] -> [n]."""
        return np.ravel_multi_index(np.asarray(factors, np.int64).T, self.factor_sizes)

    def factors_of(self, index):
        """The factor indices [n, K] of grid indices [n]."""
        return np.stack(np.unravel_index(np.asarray(index, np.int64), self.factor_sizes), axis=1).astype(np.int32)


def rendered(size=64, factor_sizes=FACTOR_SIZES):
    """The grid drawn by `keras_vae.data.sprites` at `size`×`size` (`factor_sizes` may be a coarser grid for
    tests: the renderer reads indices, so it must not exceed dSprites' sizes)."""
    if any(n > full for n, full in zip(factor_sizes, FACTOR_SIZES)):
        raise ValueError(f"factor_sizes must not exceed {FACTOR_SIZES}. Received: factor_sizes={factor_sizes}.")
    return FactorImages(factor_sizes, lambda factors: sprites.render(factors, size))


def from_npz(path, factor_sizes=FACTOR_SIZES):
    """The grid read from the original npz (`imgs` [N, 64, 64] of 0/1, `latents_classes` [N, 6] with colour
    first). Checks that the file holds the whole grid in row-major order, so an index finds its image."""
    try:
        with np.load(path, allow_pickle=False) as f:
            images, classes = f["imgs"], f["latents_classes"]
    except Exception as error:  # noqa: BLE001 - zipfile, key and value errors alike
        raise UserError(f"{path} cannot be read as the dSprites npz (it needs `imgs` and `latents_classes` "
                        f"arrays): {error}.") from None
    grid = FactorImages(factor_sizes, lambda factors: images[grid.index_of(factors)][..., None] * np.uint8(255))
    if len(images) != grid.num_images or not np.array_equal(classes[:, 1:], grid.factors_of(np.arange(len(images)))):
        raise UserError(f"{path} does not hold the dSprites grid {factor_sizes} in row-major order "
                        f"({len(images)} images); is it the original dsprites_ndarray file?")
    return grid


def source(data_dir=None, size=64, factor_sizes=FACTOR_SIZES):
    """The original npz when `data_dir` (or $KERAS_VAE_DATA_DIR) holds it, else the rendered grid."""
    folder = data_dir or os.environ.get("KERAS_VAE_DATA_DIR")
    path = os.path.join(folder, NPZ_NAME) if folder else None
    if path and os.path.exists(path):
        return from_npz(path, factor_sizes)
    return rendered(size, factor_sizes)


def sample_splits(grid, seed, num_train=NUM_TRAIN, num_test=NUM_TEST):
    """Disjoint seeded samples of the grid: (x_train, factors_train, x_test, factors_test)."""
    count = min(num_train + num_test, grid.num_images)
    num_test = min(num_test, count // 10 or 1)
    chosen = grid.factors_of(np.random.default_rng(seed).choice(grid.num_images, count, replace=False))
    images = grid.observations(chosen)
    cut = count - num_test
    return images[:cut], chosen[:cut], images[cut:], chosen[cut:]
