"""Quantizers of the discrete-code VAEs: a learned codebook (VQ) and finite scalar quantization (FSQ).

Both map encoder vectors z [..., D] to a code index per vector and a
quantized vector ẑ the decoder reads, through one call:

    quantizer(z, training, seed) -> {"indices" [...] int32, "quantized" [..., D], "loss" [...]}

`quantized` carries the straight-through gradient to z, and `loss` is the
quantizer's own term per vector (the VQ codebook and commitment terms; zero
for FSQ). `lookup(indices)` gives the vectors of given indices, and
`num_codes` the size of the code alphabet.

VectorQuantizer (van den Oord et al. 2017): the nearest of K codebook
entries, learned by the codebook loss ‖sg(z) − e‖² or by exponential moving
averages of the vectors assigned to each entry (appendix A.1; the VQ-VAE-2
default). With `restart`, an entry that goes unused for a while is moved onto
a recent encoder output (as in Dhariwal et al. 2020, Jukebox), so that
the whole codebook stays in use.

FiniteScalarQuantizer (Mentzer et al. 2023): each of the D = len(levels)
numbers is squashed into (−L/2, L/2) and rounded to one of L_d values; the
code is the tuple of the D digits, Π L_d codes in all. No codebook, no
commitment loss and no dead codes. Its numbers are first standardized with
batch statistics (a batch normalization without scale or shift): an encoder
starts with outputs far smaller than one rounding step, so every vector
rounds to the same code and the level may never leave it (vq_vae2's top
level stayed at one code for a whole run), or its outputs grow until the
bound saturates and its gradient vanishes on one code. Standardized, each
number spreads over its levels from the first step and stays there.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_vae.distribute import reduce_over_replicas

EMA_DECAY = 0.99
EMA_EPSILON = 1e-5
USAGE_DECAY = 0.99  # the usage of an entry: an EMA of the vectors assigned to it per step
RESTART_BELOW = 0.03  # restart entries whose usage fell below this (~350 steps unused after a restart)
FSQ_EPSILON = 1e-3
FSQ_MOMENTUM = 0.99  # of the moving statistics that standardize FSQ's numbers at inference
FSQ_VARIANCE_EPSILON = 1e-6  # far below an untrained encoder's variance (about 1e-4), which it must not mask


def nearest_codes(z, codebook):
    """Indices [...] of the nearest codebook rows (squared Euclidean) for vectors z [..., D].

    The vectors are flattened to one matrix first: a broadcast batch matmul of some shapes
    ([2, 1, 32, 16] by [16, 16]) returns garbage with TF 2.21's oneDNN on AVX512 EPYC CPUs (and
    has crashed the process); a plain matrix product is exact there, and it is the faster kernel anyway.
    """
    rows = tf.reshape(z, [-1, tf.shape(z)[-1]])  # (N, D)
    distances = (tf.reduce_sum(rows**2, -1, keepdims=True) - 2 * tf.linalg.matmul(rows, codebook, transpose_b=True)
                 + tf.reduce_sum(codebook**2, -1))  # (N, K)
    return tf.reshape(tf.argmin(distances, axis=-1, output_type=tf.int32), tf.shape(z)[:-1])


def perplexity(indices, num_codes):
    """exp(entropy) of the empirical code distribution of `indices` (K when all K codes are used evenly)."""
    counts = tf.math.bincount(tf.reshape(indices, [-1]), minlength=num_codes, maxlength=num_codes, dtype=tf.float32)
    p = counts / tf.reduce_sum(counts)
    return tf.exp(-tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p), p)))


def used_codes(indices):
    """How many distinct codes `indices` holds (a float32 scalar)."""
    return tf.cast(tf.size(tf.unique(tf.reshape(indices, [-1]))[0]), tf.float32)


def parse_levels(text):
    """FSQ levels from "8,5,5,5": a tuple of ints ≥ 2 (ValueError otherwise)."""
    try:
        levels = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        levels = ()
    if not levels or min(levels) < 2:
        raise ValueError(f"--fsq-levels must be comma-separated integers ≥ 2, such as 8,5,5,5. Received: {text!r}.")
    return levels


def round_straight_through(x):
    """round(x) forward, the identity backward."""
    return x + tf.stop_gradient(tf.round(x) - x)


def fsq_bound(z, levels):
    """Squashes each of the D numbers of z [..., D] so that rounding it gives exactly L_d values
    (Mentzer et al. 2023, sec. 3: for even L the range is shifted by one half)."""
    levels = tf.constant(levels, tf.float32)
    half = (levels - 1) * (1 + FSQ_EPSILON) / 2
    offset = tf.where(tf.math.floormod(levels, 2) == 0, 0.5, 0.0)
    shift = tf.math.atanh(offset / half)
    return tf.tanh(z + shift) * half - offset


@keras.saving.register_keras_serializable(package="keras_vae")
class VectorQuantizer(keras.layers.Layer):
    """A codebook of `codebook_size` vectors of `codebook_dim` numbers.

    Args:
        codebook_size: K.
        codebook_dim: D.
        commitment: β, the weight of ‖z − sg(e)‖².
        ema: learn the codebook by exponential moving averages instead of its loss.
        restart: move entries whose usage fell below RESTART_BELOW onto recent encoder outputs.
    """

    def __init__(self, codebook_size, codebook_dim, commitment=0.25, ema=False, restart=False, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})  # distances and statistics in float32 under any policy
        self.codebook_size, self.codebook_dim = int(codebook_size), int(codebook_dim)
        self.commitment, self.ema, self.restart = float(commitment), bool(ema), bool(restart)
        limit = math.sqrt(3.0 / self.codebook_dim)  # entries of unit expected norm
        # Statistics are all-reduced before they are assigned, so the first replica's value is everyone's.
        kw = dict(aggregation="only_first_replica", dtype="float32")
        self.codebook = self.add_weight(shape=(self.codebook_size, self.codebook_dim), name="codebook",
                                        initializer=keras.initializers.RandomUniform(-limit, limit),
                                        trainable=not self.ema, **kw)
        if self.ema:
            self.ema_counts = self.add_weight(shape=(self.codebook_size,), initializer="zeros", trainable=False,
                                              name="ema_counts", **kw)
            self.ema_sums = self.add_weight(shape=(self.codebook_size, self.codebook_dim), initializer="zeros",
                                            trainable=False, name="ema_sums", **kw)
        if self.restart:
            # Zero at first: the first training step moves every entry its batch did not use onto the batch's
            # vectors, a data-dependent initialization.
            self.usage = self.add_weight(shape=(self.codebook_size,), initializer="zeros", trainable=False,
                                         name="usage", **kw)
        self.built = True

    @property
    def num_codes(self):
        return self.codebook_size

    def lookup(self, indices):
        return tf.gather(self.codebook, indices)

    def call(self, vectors, training=False, seed=None):
        vectors = tf.cast(vectors, tf.float32)
        indices = nearest_codes(vectors, self.codebook)
        quantized = self.lookup(indices)
        loss = self.commitment * tf.reduce_sum(tf.square(vectors - tf.stop_gradient(quantized)), -1)
        if not self.ema:
            loss += tf.reduce_sum(tf.square(tf.stop_gradient(vectors) - quantized), -1)
        if training and (self.ema or self.restart):
            self.update(tf.reshape(vectors, [-1, self.codebook_dim]), tf.reshape(indices, [-1]), seed)
        # Straight through: the decoder's gradient reaches z as if quantization were the identity.
        return {"indices": indices, "quantized": vectors + tf.stop_gradient(quantized - vectors), "loss": loss}

    def update(self, vectors, indices, seed=None):
        """One step of the codebook's statistics for vectors [N, D] assigned to `indices` [N], summed over
        replicas: the EMA codebook (van den Oord et al. 2017, A.1) and the restarts of unused entries."""
        vectors = tf.stop_gradient(vectors)
        # Segment sums, not a one-hot matmul: exact, and clear of the oneDNN matmul that returns garbage for
        # some shapes on AVX512 EPYC CPUs (see nearest_codes; the EMA test failed about one run in five).
        counts = tf.math.unsorted_segment_sum(tf.ones_like(indices, tf.float32), indices, self.codebook_size)  # (K,)
        sums = tf.math.unsorted_segment_sum(vectors, indices, self.codebook_size)  # (K, D)
        counts, sums = reduce_over_replicas([counts, sums], "SUM")
        if self.ema:
            self.ema_counts.assign(EMA_DECAY * self.ema_counts + (1 - EMA_DECAY) * counts)
            self.ema_sums.assign(EMA_DECAY * self.ema_sums + (1 - EMA_DECAY) * sums)
            total = tf.reduce_sum(self.ema_counts)
            # Laplace smoothing keeps unused entries from dividing by zero.
            smoothed = (self.ema_counts + EMA_EPSILON) / (total + self.codebook_size * EMA_EPSILON) * total
            # Entries never assigned yet keep their vectors.
            self.codebook.assign(tf.where(self.ema_counts[:, None] > 0, self.ema_sums / smoothed[:, None],
                                          self.codebook))
        if self.restart:
            self.restart_unused(vectors, counts, seed)

    def restart_unused(self, vectors, counts, seed=None):
        """Entries whose usage fell below RESTART_BELOW move onto randomly chosen rows of `vectors` [N, D];
        the others are untouched."""
        self.usage.assign(USAGE_DECAY * self.usage + (1 - USAGE_DECAY) * counts)
        dead = self.usage < RESTART_BELOW  # (K,)
        seed = tf.zeros([2], tf.int32) if seed is None else tf.cast(seed, tf.int32)
        picks = tf.random.stateless_uniform([self.codebook_size], seed, maxval=tf.shape(vectors)[0], dtype=tf.int32)
        candidates = tf.gather(vectors, picks)  # (K, D)
        self.codebook.assign(tf.where(dead[:, None], candidates, self.codebook))
        if self.ema:  # the statistics restart as one vector at the new place
            self.ema_counts.assign(tf.where(dead, 1.0, self.ema_counts))
            self.ema_sums.assign(tf.where(dead[:, None], candidates, self.ema_sums))
        self.usage.assign(tf.where(dead, 1.0, self.usage))

    def get_config(self):
        return dict(super().get_config(), codebook_size=self.codebook_size, codebook_dim=self.codebook_dim,
                    commitment=self.commitment, ema=self.ema, restart=self.restart)


@keras.saving.register_keras_serializable(package="keras_vae")
class FiniteScalarQuantizer(keras.layers.Layer):
    """Finite scalar quantization with `levels` values per number (Π levels codes); no weights.

    The quantized numbers lie in [−1, 1]: digit d ∈ 0..L−1 of a number becomes (d − ⌊L/2⌋) / ⌊L/2⌋.
    The index of a code is its digits read in mixed radix (the first number varies fastest).

    Args:
        levels: L_d per number.
        standardize: batch-normalize the D numbers (no scale or shift; statistics synchronized across
            replicas, moving averages at inference) before the bound.
    """

    def __init__(self, levels, standardize=True, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.levels = tuple(int(level) for level in levels)
        self.standardize = bool(standardize)
        self.half_width = np.array([level // 2 for level in self.levels], np.float32)
        self.basis = np.cumprod((1,) + self.levels[:-1]).astype(np.int32)
        if self.standardize:
            self.norm = keras.layers.BatchNormalization(center=False, scale=False, momentum=FSQ_MOMENTUM,
                                                        epsilon=FSQ_VARIANCE_EPSILON, synchronized=True,
                                                        dtype="float32", name="standardize")
            self.norm.build((None, len(self.levels)))
        self.built = True

    @property
    def num_codes(self):
        return int(np.prod(self.levels))

    @property
    def codebook_dim(self):
        return len(self.levels)

    def digits_to_indices(self, digits):
        return tf.reduce_sum(digits * self.basis, axis=-1)

    def lookup(self, indices):
        digits = tf.math.floormod(tf.math.floordiv(indices[..., None], self.basis), self.levels)
        return (tf.cast(digits, tf.float32) - self.half_width) / self.half_width

    def call(self, vectors, training=False, seed=None):
        vectors = tf.cast(vectors, tf.float32)
        if self.standardize:  # over every vector of the batch, whatever the map's shape
            vectors = tf.reshape(self.norm(tf.reshape(vectors, [-1, len(self.levels)]), training=training),
                                 tf.shape(vectors))
        rounded = round_straight_through(fsq_bound(vectors, self.levels))
        digits = tf.cast(tf.stop_gradient(rounded) + self.half_width, tf.int32)
        return {"indices": self.digits_to_indices(digits), "quantized": rounded / self.half_width,
                "loss": tf.zeros(tf.shape(vectors)[:-1], tf.float32)}

    def get_config(self):
        return dict(super().get_config(), levels=list(self.levels), standardize=self.standardize)
