"""The VQ-VAE (van den Oord et al. 2017): a discrete code and a learned prior over it.

The encoder maps x to `latent_dim` vectors z_e of `codebook_dim` numbers,
laid out as an [h, w] grid. Each is replaced by its nearest codebook entry:

    c_i = argmin_k ‖z_e,i − e_k‖²,    z_q,i = e_{c_i},

and the decoder reads z_q through the straight-through estimator
z_e + sg(z_q − z_e): its gradient reaches the encoder as if quantization were
the identity. The loss per example is

    −log p(x | z_q) + ‖sg(z_e) − z_q‖² + β ‖z_e − sg(z_q)‖²      (β = `commitment`, 0.25)

(squared norms summed over the code). With `vq_ema` the codebook is instead
an exponential moving average of the vectors assigned to each entry
(appendix A.1 of the paper), and the codebook term is dropped.

Bound. q(c | x) is a point mass, so KL(q ‖ p) = −log p(c) and
ELBO = log p(x | z_q) + log p(c). During training p(c) is uniform (KL =
h·w·log K, a constant); `fit_prior` then trains a PixelCNN over the code maps
of the training set, after which the `kl` is −log p_PixelCNN(c), the bound
tightens, and `sample` draws codes from the PixelCNN instead of uniformly.

Reported besides: `vq_loss` (the two codebook terms), `perplexity`
(exp of the entropy of the batch's code usage; K when all codes are used
evenly) and `used_codes` (distinct codes in the batch).
"""

import math

import keras
import tensorflow as tf

from keras_vae import pixelcnn
from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.base import Autoencoder, elbo_terms
from keras_vae.networks import build_networks

EMA_DECAY = 0.99
EMA_EPSILON = 1e-5
PRIOR_FILTERS = 64
PRIOR_LAYERS = 4


def code_grid(positions):
    """[h, w] with h·w = positions, as square as possible (h ≤ w)."""
    height = max(d for d in range(1, int(math.isqrt(positions)) + 1) if positions % d == 0)
    return height, positions // height


def nearest_codes(z, codebook):
    """Indices [..., ] of the nearest codebook rows (squared Euclidean) for vectors z [..., D]."""
    distances = (tf.reduce_sum(z**2, -1, keepdims=True) - 2 * tf.linalg.matmul(z, codebook, transpose_b=True)
                 + tf.reduce_sum(codebook**2, -1))  # (..., K)
    return tf.argmin(distances, axis=-1, output_type=tf.int32)


def perplexity(indices, num_codes):
    """exp(entropy) of the empirical code distribution of `indices`."""
    counts = tf.math.bincount(tf.reshape(indices, [-1]), minlength=num_codes, maxlength=num_codes, dtype=tf.float32)
    p = counts / tf.reduce_sum(counts)
    return tf.exp(-tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p), p)))


@register_model("vq_vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class VQVAE(Autoencoder):
    """The VQ-VAE: a grid of `latent_dim` discrete codes from a codebook of `codebook_size` entries.

    Args (besides `Autoencoder`'s):
        codebook_size: K, the number of codebook vectors.
        codebook_dim: D, the length of each vector.
        commitment: β of the commitment loss.
        vq_ema: update the codebook by exponential moving averages instead of its loss.
    """

    hyperparameters = (
        # Its own declaration: a count of code positions, not a latent size, so no dataset default applies.
        H("latent_dim", int, 16, "Code positions h·w of the code map (as square a grid as h·w allows).",
          minimum=1),
        H("codebook_size", int, 512, "Codebook vectors K.", minimum=1, reference="van den Oord et al. 2017"),
        H("codebook_dim", int, 16, "Numbers per codebook vector D.", minimum=1),
        H("commitment", float, 0.25, "Weight β of the commitment loss.", minimum=0),
        H("vq_ema", bool, False, "EMA codebook updates instead of the codebook loss (appendix A.1)."),
    )
    continuous_code = False

    def __init__(self, image_shape, **kwargs):
        super().__init__(image_shape, **kwargs)
        self.grid = code_grid(self.latent_dim)
        limit = math.sqrt(3.0 / self.codebook_dim)  # codebook vectors of unit expected norm
        aggregation = "only_first_replica"  # EMA statistics are all-reduced before they are assigned
        self.codebook = self.add_weight(
            shape=(self.codebook_size, self.codebook_dim), initializer=keras.initializers.RandomUniform(-limit, limit),
            trainable=not self.vq_ema, name="codebook", dtype="float32", aggregation=aggregation)
        if self.vq_ema:
            self.ema_counts = self.add_weight(shape=(self.codebook_size,), initializer="zeros", trainable=False,
                                              name="ema_counts", dtype="float32", aggregation=aggregation)
            self.ema_sums = self.add_weight(shape=(self.codebook_size, self.codebook_dim), initializer="zeros",
                                            trainable=False, name="ema_sums", dtype="float32",
                                            aggregation=aggregation)
        self.prior_network = pixelcnn.build_pixelcnn(self.grid, self.codebook_size, PRIOR_FILTERS, PRIOR_LAYERS,
                                                     name="prior_network")
        self.prior_network.trainable = False  # trained apart, by `fit_prior`
        self.prior_fitted = self.add_weight(shape=(), initializer="zeros", trainable=False, name="prior_fitted",
                                            dtype="float32")

    def build_networks(self):
        size = self.latent_dim * self.codebook_dim  # h·w vectors of D numbers, flattened
        return build_networks(self.architecture, self.image_shape, size, size)

    @property
    def code_dim(self):
        return self.latent_dim * self.codebook_dim

    def metric_names(self):
        return ("loss", "elbo", "reconstruction_loss", "kl", "vq_loss", "perplexity", "used_codes")

    # ------------------------------------------------------------ the code
    def encoder_vectors(self, x, training=False):
        """z_e [B, h·w, D] in float32."""
        z = tf.cast(self.encoder(x, training=training), tf.float32)
        return tf.reshape(z, [-1, self.latent_dim, self.codebook_dim])

    def nearest_entries(self, vectors):
        """(indices [B, h·w], z_q [B, h·w, D]) for vectors [B, h·w, D]."""
        indices = nearest_codes(vectors, self.codebook)
        return indices, tf.gather(self.codebook, indices)

    def decode_vectors(self, vectors, training=False):
        """The decoder's raw output for code vectors [B, h·w, D]."""
        return self.decoder(tf.reshape(vectors, [-1, self.code_dim]), training=training)

    def encode_indices(self, x):
        """int32 code maps [B, h, w]."""
        indices, _ = self.nearest_entries(self.encoder_vectors(x))
        return tf.reshape(indices, [-1, *self.grid])

    def codebook_vectors(self, indices):
        """The codebook entries [B, h·w, D] of code maps [B, h, w]."""
        return tf.gather(self.codebook, tf.reshape(indices, [-1, self.latent_dim]))

    def decode_indices(self, indices):
        """The decoder mean [B, H, W, C] for code maps [B, h, w]."""
        return self.likelihood_layer.mean(self.decode_vectors(self.codebook_vectors(indices)))

    def encode(self, x, y=None):
        """The encoder's continuous output z_e, flattened [B, h·w·D], and zero spread."""
        vectors = tf.reshape(self.encoder_vectors(x), [-1, self.code_dim])
        return vectors, tf.zeros_like(vectors)

    def decoder_inputs(self, z, y=None):
        """Continuous codes [B, h·w·D] are quantized to their nearest entries before decoding."""
        _, quantized = self.nearest_entries(tf.reshape(tf.cast(z, tf.float32), [-1, self.latent_dim, self.codebook_dim]))
        return tf.reshape(quantized, [-1, self.code_dim])

    # ------------------------------------------------------------- the prior
    def code_log_prior(self, indices):
        """log p(c) [B] for code maps [B, h, w]: uniform until `fit_prior`, then the PixelCNN's."""
        uniform = -self.latent_dim * math.log(self.codebook_size)
        return tf.cond(self.prior_fitted > 0.5,
                       lambda: pixelcnn.code_log_prob(self.prior_network, indices),
                       lambda: tf.fill(tf.shape(indices)[:1], tf.constant(uniform, tf.float32)))

    def sample_indices(self, num_samples, seed, temperature=1.0):
        """Code maps [N, h, w] from the prior (stateless in `seed`, an int scalar)."""
        seed = tf.stack([tf.cast(seed, tf.int32), tf.constant(0, tf.int32)])
        return tf.cond(
            self.prior_fitted > 0.5,
            lambda: pixelcnn.sample_codes(self.prior_network, num_samples, self.grid, seed, temperature),
            lambda: tf.random.stateless_uniform([num_samples, *self.grid], seed=seed, maxval=self.codebook_size,
                                                dtype=tf.int32))

    def sample(self, num_samples, seed=0, temperature=1.0, y=None):
        """(x_mean [N, H, W, C], code maps [N, h, w]) drawn from the code prior."""
        indices = self.sample_indices(num_samples, seed, temperature)
        return self.decode_indices(indices), indices

    # ---------------------------------------------------------- objective
    def compute_terms(self, x, training=False, y=None):
        vectors = self.encoder_vectors(self.corrupt(x, training), training)  # (B, P, D)
        indices, quantized = self.nearest_entries(vectors)
        if training and self.vq_ema:
            self.update_codebook(vectors, indices)
        straight_through = vectors + tf.stop_gradient(quantized - vectors)
        reconstruction_loss = -self.likelihood_layer(self.decode_vectors(straight_through, training)).log_prob(x)
        commitment = tf.reduce_sum(tf.square(vectors - tf.stop_gradient(quantized)), axis=[1, 2])  # (B,)
        vq_loss = self.commitment * commitment
        if not self.vq_ema:
            vq_loss += tf.reduce_sum(tf.square(tf.stop_gradient(vectors) - quantized), axis=[1, 2])
        kl = -self.code_log_prior(tf.reshape(indices, [-1, *self.grid]))
        used_codes = tf.cast(tf.size(tf.unique(tf.reshape(indices, [-1]))[0]), tf.float32)
        return elbo_terms(reconstruction_loss, kl, vq_loss=vq_loss,
                          perplexity=perplexity(indices, self.codebook_size), used_codes=used_codes)

    def regularizer(self, terms, beta):
        # The prior's term is constant for the autoencoder (the PixelCNN is trained apart).
        return tf.reduce_mean(terms["vq_loss"])

    def update_codebook(self, vectors, indices):
        """One EMA step (van den Oord et al. 2017, A.1), with statistics summed over replicas."""
        flat = tf.reshape(vectors, [-1, self.codebook_dim])
        one_hot = tf.one_hot(tf.reshape(indices, [-1]), self.codebook_size, dtype=tf.float32)  # (N, K)
        counts, sums = tf.reduce_sum(one_hot, 0), tf.matmul(one_hot, flat, transpose_a=True)  # (K,), (K, D)
        context = tf.distribute.get_replica_context()
        if context is not None:
            counts, sums = context.all_reduce("SUM", [counts, sums])
        self.ema_counts.assign(EMA_DECAY * self.ema_counts + (1 - EMA_DECAY) * counts)
        self.ema_sums.assign(EMA_DECAY * self.ema_sums + (1 - EMA_DECAY) * sums)
        total = tf.reduce_sum(self.ema_counts)
        # Laplace smoothing keeps unused entries from dividing by zero.
        smoothed = (self.ema_counts + EMA_EPSILON) / (total + self.codebook_size * EMA_EPSILON) * total
        # Entries never assigned yet keep their initial vectors.
        self.codebook.assign(tf.where(self.ema_counts[:, None] > 0, self.ema_sums / smoothed[:, None], self.codebook))

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """A point-mass posterior: every 'sample' has log weight log p(x | z_q) + log p(c) = the ELBO."""
        indices = self.encode_indices(x)
        log_likelihood = self.likelihood_layer(self.decode_vectors(self.codebook_vectors(indices))).log_prob(x)
        log_weight = log_likelihood + self.code_log_prior(indices)
        return tf.tile(log_weight[None], [num_samples, 1]), log_weight

    def serving_signatures(self, max_samples=None):
        from keras_vae.serving import vq_signatures

        return vq_signatures(self, max_samples)
