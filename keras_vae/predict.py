"""Running a SavedModel's signature locally, with the inputs TF Serving would be sent."""

import os

import numpy as np

from keras_vae.errors import UserError
from keras_vae.images import make_grid, read_image, save_png


def load_saved_model(path):
    import tensorflow as tf

    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise UserError(f"{path} is not a SavedModel folder: it has no saved_model.pb.")
    return tf.saved_model.load(path)


def read_input(path):
    """An array from a .npy file (as stored), or an image file as uint8 [1, H, W, C]."""
    if not path:
        raise UserError("This signature needs --input FILE (.npy, .png or .jpg).")
    if not os.path.exists(path):
        raise UserError(f"Input file {path} does not exist.")
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise UserError(f"{path} is not a readable .npy file ({error}).") from None
    return read_image(path)[None]


def prepare_input(name, array, path):
    """The array fed to input `name`: images (`x`) as float32 in [0, 1], uint8 scaled by 1/255 the
    same way whether they came from a PNG or a .npy; codes (`z`) as finite floats; code maps as ints."""
    if array.dtype.kind not in "biuf":
        raise UserError(f"{path} holds {array.dtype} values; input `{name}` needs numbers.")
    if name == "indices":
        return array
    values = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 and name == "x" else array.astype(np.float32)
    if not np.isfinite(values).all():
        raise UserError(f"{path} contains NaN or infinite values; input `{name}` must be finite.")
    if name == "x" and (values.min() < 0 or values.max() > 1):
        raise UserError(f"{path} has values in [{values.min():g}, {values.max():g}]; images (input `x`) must be "
                        "floats in [0, 1] or uint8 0..255.")
    return values


def run_signature(saved_model, signature, input_path=None, num_samples=8, seed=0, label=None):
    """Calls `signature` of the SavedModel at `saved_model`; returns numpy outputs by name.

    `label` fills a conditional model's `y` input (one label for the whole batch).
    """
    import tensorflow as tf

    loaded = load_saved_model(saved_model)
    if signature not in loaded.signatures:
        raise UserError(
            f"Unknown signature {signature!r}. This model has: {', '.join(sorted(loaded.signatures))}."
        )
    function = loaded.signatures[signature]
    _, specs = function.structured_input_signature
    if "num_samples" in specs and (not isinstance(num_samples, int) or num_samples <= 0):
        raise UserError(f"--num-samples must be a positive integer. Received: num_samples={num_samples!r}.")
    inputs = {}
    for name, spec in specs.items():
        if name == "num_samples":
            inputs[name] = tf.constant(num_samples, tf.int32)
        elif name == "seed":
            inputs[name] = tf.constant(seed, tf.int32)
        elif name != "y":
            array = prepare_input(name, read_input(input_path), input_path)
            if array.ndim == len(spec.shape) - 1:
                array = array[None]
            inputs[name] = tf.constant(array.astype(spec.dtype.as_numpy_dtype))
    if "y" in specs:
        if label is None:
            raise UserError(f"Signature {signature!r} of this conditional model needs --label K.")
        # One label per example of the x or z input, or a scalar for `sample`.
        shape = [len(inputs.get("x", inputs.get("z")))] if specs["y"].shape.rank else []
        inputs["y"] = tf.fill(shape, tf.constant(label, tf.int32))
    elif label is not None:
        raise UserError(f"--label applies to conditional models only; signature {signature!r} takes no label.")
    try:
        outputs = function(**inputs)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
        first = str(error).strip().splitlines()
        detail = next((line for line in first if "must have shape" in line), first[0] if first else "")
        raise UserError(f"Signature {signature!r} rejected the input: {detail}") from None
    return {name: value.numpy() for name, value in outputs.items()}


def write_outputs(outputs, path):
    """Saves outputs to .npz, or the `x_mean` images as a PNG grid."""
    if path.endswith(".png"):
        if "x_mean" not in outputs:
            raise UserError(f"Only signatures with an x_mean output can be written as PNG; this one has {', '.join(outputs)}.")
        images = outputs["x_mean"]
        save_png(path, make_grid(images, columns=min(8, len(images))))
    else:
        np.savez(path, **outputs)
