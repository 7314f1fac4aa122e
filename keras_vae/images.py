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


MAX_PIXELS = 2**26  # 67M pixels: far beyond any training image, far below a decompression bomb's claim


def read_image(path):
    """An image file as uint8 [H, W, C], C = 1 (grey) or 3 (colour), the same way for training and `predict`.

    Palette and 1-bit images become grey or RGB by their colours, 16-bit grey is scaled to 8 bits
    (65535 -> 255), an alpha channel is dropped; images of more than MAX_PIXELS pixels (a possible
    decompression bomb) and float images are refused with a message.

    Raises:
        UserError: the file cannot be read, or holds an image of a kind that cannot be converted.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    from keras_vae.errors import UserError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise UserError(f"Image {path} has {image.width}x{image.height} pixels, more than {MAX_PIXELS}: "
                                    "refused as a possible decompression bomb. Resize it first.")
                image.load()
                return _to_uint8_array(image, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(f"Image {path} is refused as a possible decompression bomb ({error}).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"Image {path} is truncated or corrupt ({error}).") from None


def _to_uint8_array(image, path):
    from keras_vae.errors import UserError

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image).astype(np.int64)
        if wide.min() < 0 or wide.max() > 65535:
            raise UserError(f"Image {path} holds 32-bit values outside 0..65535; save it as 8- or 16-bit.")
        return (wide * 255 // 65535).astype(np.uint8)[..., None]
    if image.mode == "F":
        raise UserError(f"Image {path} holds 32-bit floats; save it as an 8- or 16-bit image.")
    if image.mode in ("L", "1", "LA"):
        return np.asarray(image.convert("L"))[..., None]
    rgb = np.asarray(image.convert("RGB"))  # palette, RGBA, CMYK, YCbCr, ...
    if image.mode in ("P", "PA") and (rgb == rgb[..., :1]).all():
        return rgb[..., :1]  # a grey palette stays grey
    return rgb
