"""A small PixelCNN over a grid of discrete codes: the learned prior of a VQ-VAE.

p(c) = Π_i p(c_i | c_<i) in raster order over an [h, w] grid of indices in
0..K-1 (van den Oord et al. 2016). Causality comes from masked kernels: the
first layer (mask "A") sees only earlier positions, the later ones (mask
"B") also their own position's features. The first kernel spans the whole
grid when the grid is at most 4×4 (the default code map), so there is no
blind spot there.

References:
    van den Oord, Kalchbrenner & Kavukcuoglu (2016). Pixel Recurrent Neural Networks. ICML.
    van den Oord, Vinyals & Kavukcuoglu (2017). Neural Discrete Representation Learning. NeurIPS.
"""

import keras
import numpy as np
import tensorflow as tf


def causal_mask(kernel_height, kernel_width, mask_type):
    """[kh, kw] 0/1: the kernel taps a position may read (rows above, and left of centre;
    the centre too for mask "B")."""
    mask = np.zeros((kernel_height, kernel_width), np.float32)
    centre_row, centre_col = kernel_height // 2, kernel_width // 2
    mask[:centre_row, :] = 1
    mask[centre_row, : centre_col + (1 if mask_type == "B" else 0)] = 1
    return mask


@keras.saving.register_keras_serializable(package="keras_vae")
class MaskedConv2D(keras.layers.Layer):
    """A 'same'-padded 2-D convolution whose kernel is multiplied by a causal mask."""

    def __init__(self, filters, kernel_size, mask_type, activation=None, **kwargs):
        super().__init__(**kwargs)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B'. Received: {mask_type!r}.")
        self.filters, self.kernel_size, self.mask_type = filters, tuple(kernel_size), mask_type
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(kh, kw, input_shape[-1], self.filters),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        self.mask = causal_mask(kh, kw, self.mask_type)[:, :, None, None]

    def call(self, inputs):
        kernel = self.kernel * keras.ops.cast(self.mask, self.kernel.dtype)
        outputs = keras.ops.conv(inputs, keras.ops.cast(kernel, inputs.dtype), padding="same")
        return self.activation(outputs + keras.ops.cast(self.bias, inputs.dtype))

    def get_config(self):
        return dict(super().get_config(), filters=self.filters, kernel_size=self.kernel_size,
                    mask_type=self.mask_type, activation=keras.activations.serialize(self.activation))


def build_pixelcnn(grid_shape, num_codes, filters=64, num_layers=4, name="pixelcnn"):
    """The prior network: int32 indices [B, h, w] -> logits [B, h, w, K] of p(c_i | c_<i).

    An embedding of each index, a mask-A convolution (7×7, or the whole grid when smaller), then `num_layers`
    residual blocks of masked 3×3 (B) → ReLU → 1×1, then 1×1 → ReLU → 1×1 to K logits.
    """
    height, width = grid_shape
    first = (min(7, 2 * height - 1), min(7, 2 * width - 1))
    indices = keras.Input((height, width), dtype="int32", name="indices")
    h = keras.layers.Embedding(num_codes, filters)(indices)  # = one-hot times a K×filters matrix, K/filters× cheaper
    h = MaskedConv2D(filters, first, "A")(h)
    for _ in range(num_layers):
        # No ReLU right after the Add: grappler's Add+ReLU fusion fails inside the tf.cond
        # that chooses this prior, and logs an alarming error.
        r = MaskedConv2D(filters, (3, 3), "B", activation="relu")(h)
        r = keras.layers.Conv2D(filters, 1)(r)
        h = keras.layers.Add()([h, r])
    h = keras.layers.Conv2D(filters, 1, activation="relu")(h)
    logits = keras.layers.Conv2D(num_codes, 1, dtype="float32")(h)
    return keras.Model(indices, logits, name=name)


def code_log_prob(network, indices):
    """log p(c) [B] of code maps [B, h, w] under the PixelCNN (teacher forcing)."""
    logits = tf.cast(network(indices), tf.float32)
    log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=indices, logits=logits)  # (B, h, w)
    return tf.reduce_sum(log_probs, axis=[1, 2])


def sample_codes(network, num_samples, grid_shape, seed, temperature=1.0):
    """Ancestral sampling in raster order: int32 code maps [num_samples, h, w], stateless in `seed` [2]."""
    height, width = grid_shape
    codes = tf.zeros([num_samples, height, width], tf.int32)
    for position in range(height * width):  # h·w network passes; the grid is small
        row, col = divmod(position, width)
        logits = tf.cast(network(codes)[:, row, col, :], tf.float32) / temperature  # (N, K)
        draw = tf.random.stateless_categorical(
            logits, 1, seed=tf.random.experimental.stateless_fold_in(seed, position), dtype=tf.int32)[:, 0]
        where = tf.one_hot(row * width + col, height * width, dtype=tf.int32)  # (h*w,)
        codes += tf.reshape(where, [1, height, width]) * draw[:, None, None]
    return codes
