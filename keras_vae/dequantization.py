"""Dequantization: a continuous density over 8-bit images that bounds their discrete likelihood.

A model with a density p over continuous images must not be scored on the
256 discrete levels directly (a density can grow without bound on points).
With pixel values k ∈ {0..255}^D, noise u ∈ [0, 1)^D and y = (k + u) / 256:

    log P(k) = log ∫ p_v(k + u) du ≥ E_q(u|k)[log p_y(y) − log q(u|k)] − D log 256

(Theis et al. 2016 for uniform q; Ho et al. 2019, Flow++, for a learned
q(u|k)). p_v is the density on [0, 256)^D and p_y = 256^D p_v the model's on
[0, 1)^D, hence the D log 256. With uniform q the log q term is 0 and the
bound is the usual "add uniform noise" one; a learned q tightens it.

The learned q(u|k) here is a small conditional flow: per pixel,
u = sigmoid(a), a ~ N(μ(k), σ(k)²), with μ, σ from two 3×3 convolutions of
the image: an affine bijector followed by `tfb.Sigmoid`, whose log-density
comes with the sample (`experimental_sample_and_log_prob`) so that u near 0
or 1 is never inverted.

Bits per dimension are then nll / (D ln 2) of the discrete bound, the number
the papers report (Salimans et al. 2017).

References:
    Theis, van den Oord & Bethge (2016). A note on the evaluation of generative models. ICLR.
    Ho, Chen, Srinivas, Duan & Abbeel (2019). Flow++. ICML.
"""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd, tfb = tfp.distributions, tfp.bijectors

LEVELS = 256
DEQUANTIZERS = ("none", "uniform", "variational")


def pixel_levels(x):
    """The 8-bit levels k [B, ...] float32 of images x in [0, 1] stored as k / 255."""
    return tf.round(tf.cast(x, tf.float32) * (LEVELS - 1))


def continuous_images(levels, u):
    """y = (k + u) / 256 in [0, 1)."""
    return (levels + u) / LEVELS


def change_of_variables(num_dims):
    """D log 256: nats between a density on [0, 1)^D and one on [0, 256)^D."""
    return num_dims * math.log(LEVELS)


def dequantized_log_likelihood(log_density, log_q, num_dims):
    """The per-sample bound on log P(k): log p_y(y) − log q(u|k) − D log 256 (each [B])."""
    return log_density - log_q - change_of_variables(num_dims)


@keras.saving.register_keras_serializable(package="keras_vae")
class VariationalDequantizer(keras.layers.Layer):
    """q(u | k): per pixel u = sigmoid(a), a ~ N(μ, σ²), μ and σ from two 3×3 convolutions of the image.

    Args:
        channels: C of the images.
        filters: the hidden convolution's channels.

    Call arguments:
        x: images [B, H, W, C] in [0, 1].
        seed: int [2], stateless.

    Returns:
        (u [B, H, W, C] in (0, 1), log q(u | k) [B]).
    """

    def __init__(self, channels, filters=16, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.channels, self.filters = int(channels), int(filters)
        self.hidden = keras.layers.Conv2D(self.filters, 3, padding="same", activation="relu", dtype="float32")
        self.params = keras.layers.Conv2D(2 * self.channels, 3, padding="same", dtype="float32",
                                          kernel_initializer="zeros")  # starts as logit-normal(0, softplus(0))

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.params.build((*input_shape[:-1], self.filters))
        self.built = True

    def call(self, x, seed):
        x = tf.cast(x, tf.float32)
        loc, raw_scale = tf.split(self.params(self.hidden(x - 0.5)), 2, axis=-1)
        base = tfd.Normal(loc, tf.nn.softplus(raw_scale) + 1e-3)
        flow = tfd.Independent(tfd.TransformedDistribution(base, tfb.Sigmoid()), reinterpreted_batch_ndims=3)
        u, log_q = flow.experimental_sample_and_log_prob(seed=seed)
        return u, log_q

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, filters=self.filters)
        return config
