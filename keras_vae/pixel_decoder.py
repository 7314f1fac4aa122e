"""p(x|z) as a gated PixelCNN over the pixels: a decoder strong enough to ignore z.

With `--decoder pixelcnn` the architecture's decoder no longer gives every
pixel's parameters; it maps z to a feature map f(z) [B, H, W, Fc] (Fc =
`CONDITION_CHANNELS`), and the likelihood is autoregressive in raster order
(van den Oord et al. 2016; PixelVAE, Gulrajani et al. 2017):

    log p(x | z) = Σ_i log p(x_i | x_<i, f(z)),

the gated PixelCNN of `keras_vae.pixelcnn` with f(z) as its condition. A
pixel of C binary channels is one of 2^C values, so each p(x_i | ...) is a
categorical over them and log p(x|z) is exact (it sums to 1 over all
images, which the tests check on a 3×3 space). That makes the ELBO and the
importance-weighted bound exact bounds, as with the factorized decoder.

Because the decoder can model x from x_<i alone, the KL term can fall to
zero and z carry nothing: posterior collapse (Bowman et al. 2016; Chen et
al. 2017). `decoder_dropout` is Bowman et al.'s "word dropout" for pixels:
in training, each earlier pixel is withheld (replaced by a token of its own,
index 2^C) with that probability, so the decoder must take more from z.
Withholding z itself would weaken z, not the decoder, so it is x_<i that is
dropped. The likelihood is evaluated with nothing withheld.

The mean of p(x|z) is intractable, so `decode` returns one draw, made pixel
by pixel with stateless noise from a fixed seed: the same z gives the same
picture. Drawing is H·W network passes (784 for 28×28).

References:
    van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu (2016). Conditional Image
        Generation with PixelCNN Decoders. NeurIPS.
    Gulrajani et al. (2017). PixelVAE: A Latent Variable Model for Natural Images. ICLR.
    Bowman et al. (2016). Generating Sentences from a Continuous Space. CoNLL.
    Chen et al. (2017). Variational Lossy Autoencoder. ICLR.
"""

import keras
import tensorflow as tf

from keras_vae.distribute import replica_id
from keras_vae.pixelcnn import build_pixelcnn, sample_codes

CONDITION_CHANNELS = 16  # Fc, the channels of the feature map the architecture's decoder makes of z


def pixel_indices(x):
    """The index Σ_c x_c·2^c [B, H, W] int32 of each pixel of binary images x [B, H, W, C]."""
    channels = x.shape[-1]
    weights = tf.constant([2**c for c in range(channels)], tf.int32)
    return tf.reduce_sum(tf.cast(tf.round(tf.cast(x, tf.float32)), tf.int32) * weights, axis=-1)


def index_pixels(indices, channels):
    """The binary images [B, H, W, C] float32 of pixel indices [B, H, W] (the inverse of `pixel_indices`)."""
    bits = tf.bitwise.right_shift(tf.expand_dims(indices, -1), tf.range(channels, dtype=tf.int32))
    return tf.cast(tf.bitwise.bitwise_and(bits, 1), tf.float32)


def withhold(indices, rate, seed, token):
    """`indices` with each position replaced by `token` with probability `rate` (stateless in `seed`)."""
    dropped = tf.random.stateless_uniform(tf.shape(indices), seed=seed) < rate
    return tf.where(dropped, tf.cast(token, indices.dtype), indices)


class RasterLikelihood:
    """p(x | z) = Π_i p(x_i | x_<i, f(z)) for one batch of conditions f(z) [B, H, W, Fc].

    What `PixelCNNLikelihood` returns: `log_prob(x)` [B] exact, `sample(seed)` images [B, H, W, C].
    `dropout_seed` (training only) withholds earlier pixels at the layer's `dropout` rate.
    """

    def __init__(self, layer, condition, dropout_seed=None):
        self.layer, self.condition, self.dropout_seed = layer, condition, dropout_seed

    def logits(self, x):
        """Logits [B, H, W, 2^C] of each pixel's value given the pixels before it (teacher forcing)."""
        indices = pixel_indices(x)
        if self.dropout_seed is not None and self.layer.dropout > 0:
            indices = withhold(indices, self.layer.dropout, self.dropout_seed, self.layer.num_values)
        return tf.cast(self.layer.network([indices, self.condition]), tf.float32)

    def log_prob(self, x):
        labels = pixel_indices(x)
        log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=self.logits(x))
        return tf.reduce_sum(log_probs, axis=[1, 2])  # (B,)

    def sample(self, seed, temperature=1.0):
        """Images [B, H, W, C] drawn pixel by pixel in raster order, stateless in `seed` (int [2])."""
        height, width, channels = self.layer.image_shape
        indices = sample_codes(self.layer.network, tf.shape(self.condition)[0], (height, width),
                               tf.cast(seed, tf.int32), temperature, condition=self.condition)
        return index_pixels(indices, channels)


@keras.saving.register_keras_serializable(package="keras_vae")
class PixelCNNLikelihood(keras.layers.Layer):
    """The autoregressive p(x|z) over binary pixels from the decoder's feature map.

    Args:
        image_shape: (H, W, C); C ≤ 4 binary channels (2^C values per pixel).
        num_layers: gated layers (the receptive field grows by about a row per layer).
        filters: channels of each PixelCNN stream.
        dropout: in [0, 1), the training-time rate at which earlier pixels are withheld.
        seed: seeds the withholding.

    Call arguments:
        features: f(z) [B, H, W, CONDITION_CHANNELS].
        training: withhold pixels (when `dropout` > 0).

    Returns:
        A `RasterLikelihood`.
    """

    def __init__(self, image_shape, num_layers=6, filters=32, dropout=0.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        if not 1 <= self.image_shape[-1] <= 4:
            raise ValueError(f"The pixelcnn decoder takes 1 to 4 binary channels. Received: image_shape={image_shape}.")
        self.num_layers, self.filters, self.dropout, self.seed = num_layers, filters, float(dropout), int(seed)
        self.num_values = 2 ** self.image_shape[-1]
        self.network = build_pixelcnn(self.image_shape[:2], self.num_values, filters, num_layers,
                                      name="pixel_decoder", condition_channels=CONDITION_CHANNELS,
                                      input_codes=self.num_values + 1)
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="dropout_seed")
        self.built = True

    def call(self, features, training=False):
        dropout_seed = None
        if training and self.dropout > 0:
            seed = tf.cast(self.seed_generator.next(), tf.int64)
            dropout_seed = tf.random.experimental.stateless_fold_in(seed, replica_id())
        return RasterLikelihood(self, features, dropout_seed)

    def mean(self, features):
        """One draw with a fixed seed (the mean of an autoregressive p(x|z) is intractable)."""
        return self.call(features).sample(tf.constant([0, 0], tf.int32))

    def get_config(self):
        config = super().get_config()
        config.update(image_shape=list(self.image_shape), num_layers=self.num_layers, filters=self.filters,
                      dropout=self.dropout, seed=self.seed)
        return config
