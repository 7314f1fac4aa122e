"""A procedural dSprites-like dataset, generated in-process and deterministic for a seed.

Each image is one white shape on black, drawn from five ground-truth factors
as in dSprites (Matthey et al. 2017): shape (square, ellipse, heart),
scale (6 values), orientation (40 values in [0, 2π)), x and y position
(32 values each). Nothing is downloaded.
"""

import numpy as np

FACTOR_NAMES = ("shape", "scale", "orientation", "x", "y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")


def _inside(shape_index, u, v):
    """Whether points (u, v) in the shape's own frame (unit half-size) lie inside it."""
    if shape_index == 0:  # square
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape_index == 1:  # ellipse, elongated so that rotation is visible
        return (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1.0
    # heart: (x² + y² - 1)³ - x² y³ ≤ 0, scaled into the unit box, point down.
    x, y = u * 1.25, -v * 1.25 + 0.15
    return (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0


def render(factors, size=64):
    """Renders factor indices [N, 5] into binary images [N, size, size, 1] uint8 (0 or 255)."""
    factors = np.asarray(factors)
    coords = (np.arange(size) + 0.5) / size  # pixel centres in [0, 1]
    grid_y, grid_x = np.meshgrid(coords, coords, indexing="ij")
    images = np.zeros((len(factors), size, size, 1), np.uint8)
    for i, (shape, scale, orientation, x, y) in enumerate(factors):
        half = 0.08 + 0.03 * scale  # half-size in image units: 0.08 .. 0.23
        centre_x = 0.25 + 0.5 * x / 31
        centre_y = 0.25 + 0.5 * y / 31
        angle = 2 * np.pi * orientation / 40
        dx, dy = (grid_x - centre_x) / half, (grid_y - centre_y) / half
        u = np.cos(angle) * dx + np.sin(angle) * dy
        v = -np.sin(angle) * dx + np.cos(angle) * dy
        images[i, ..., 0] = _inside(shape, u, v) * 255
    return images


def sample_factors(num, seed):
    """Draws `num` factor combinations uniformly, [num, 5] int32."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, num) for n in FACTOR_SIZES], axis=1).astype(np.int32)


def make_sprites(num_train=20000, num_test=2000, size=64, seed=0):
    """Returns (x_train, factors_train, x_test, factors_test)."""
    factors = sample_factors(num_train + num_test, seed)
    images = render(factors, size)
    return images[:num_train], factors[:num_train], images[num_train:], factors[num_train:]
