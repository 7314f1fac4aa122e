"""Image grids and PNG files for samples, reconstructions and traversals."""

import numpy as np


def to_uint8(images):
    """float [0, 1] -> uint8 0..255 (clipped)."""
    return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def make_grid(images, columns, pad=2, background=0.5):
    """Tiles images [N, H, W, C] into one grid image with `pad`-pixel gaps.

    Returns:
        float32 [rows·(H+pad)+pad, columns·(W+pad)+pad, C].
    """
    images = np.asarray(images, np.float32)
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    grid = np.full(
        (rows * (height + pad) + pad, columns * (width + pad) + pad, channels), background, np.float32
    )
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid


def save_png(path, image):
    """Writes a float [0, 1] image [H, W, C] (C = 1 or 3) as PNG."""
    from PIL import Image

    array = to_uint8(image)
    if array.shape[-1] == 1:
        array = array[..., 0]
    Image.fromarray(array).save(path, format="PNG")
