"""The discrete-code autoencoders' base, and the VQ-VAE (van den Oord et al. 2017).

The encoder maps x to maps of vectors z_e [h, w, D], one map per level (one
level here; two in `vq_vae2`). A quantizer (`keras_vae.quantizers`) replaces
each vector by a code: the nearest of K codebook entries (VQ), or the
rounded digits of finite scalar quantization (FSQ). The decoder reads the
quantized vectors, with the straight-through gradient reaching the encoder
as if quantization were the identity. The loss per example is

    −log p(x | z_q) + Σ_positions (‖sg(z_e) − z_q‖² + β ‖z_e − sg(z_q)‖²)      (β = `commitment`)

with the codebook term dropped under EMA updates (`vq_ema`, appendix A.1)
and both dropped for FSQ.

Bound. q(c | x) is a point mass, so KL(q ‖ p) = −log p(c) and
ELBO = log p(x | z_q) + log p(c). During training p(c) is uniform (KL =
Σ_levels h·w·log K, a constant); `keras-vae fit-prior` then trains a gated
PixelCNN over each level's code maps (a lower level's conditioned on the
level above), after which `kl` is −log p_PixelCNN(c) in nats, the bound
tightens, and `sample` draws codes from the PixelCNNs, level by level.

Reported besides: `vq_loss`, and per level `perplexity` (exp of the entropy
of the batch's code usage) and `used_codes` (distinct codes in the batch).
"""

import math

import keras
import tensorflow as tf

from keras_vae import pixelcnn
from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.base import Autoencoder, elbo_terms
from keras_vae.errors import UserError
from keras_vae.networks import build_networks, conv1d_code_networks
from keras_vae.quantizers import FiniteScalarQuantizer, VectorQuantizer, parse_levels, perplexity, used_codes

QUANTIZERS = ("vq", "fsq")
PRIOR_MIN_LAYERS = 4
ROW_PRIOR_KERNEL = 7  # a row of codes along time: the first layer reads 1 code back, each next one 3 more
ROW_PRIOR_LAYERS = 12  # ... up to 37 codes back, the default context of a row's prior


def code_grid(positions):
    """[h, w] with h·w = positions, as square as possible (h ≤ w)."""
    height = max(d for d in range(1, int(math.isqrt(positions)) + 1) if positions % d == 0)
    return height, positions // height


def prior_shape(grid, layers=None):
    """(kernel size, gated layers) of the PixelCNN prior over an [h, w] code map: kernel 3 and enough layers for
    every position to see all earlier ones (at least 4); a row of codes along time (h = 1, often hundreds of
    codes) gets kernel 7 and at most 12 layers, a context of 3·layers + 1 = 37 codes. `layers` overrides the count."""
    if grid[0] == 1:
        return ROW_PRIOR_KERNEL, layers or max(1, min(ROW_PRIOR_LAYERS, math.ceil((grid[1] - 2) / 3)))
    return 3, layers or max(PRIOR_MIN_LAYERS, pixelcnn.covering_depth(grid))


def keyed(name, level):
    """The name of a level's part: `name` for the one level of `vq_vae`, `name_level` otherwise."""
    return f"{name}_{level}" if level else name


class CodeMapAutoencoder(Autoencoder):
    """The base of the discrete-code models: quantizers, code priors, the bound, sampling and signatures.

    A subclass names its `levels` (sampled in that order, each one's prior conditioned on the level
    `prior_condition` names) and defines `code_grids`, `quantize_levels` and `decode_quantized`.
    """

    hyperparameters = (
        H("quantizer", str, "vq", "How encoder vectors become codes: a codebook (vq) or finite scalar "
          "quantization (fsq).", choices=QUANTIZERS, attribute="quantizer_name", reference="Mentzer et al. 2023"),
        H("codebook_size", int, 512, "Codebook vectors K (per level).", minimum=1, reference="van den Oord et al. 2017"),
        H("codebook_dim", int, 16, "Numbers per codebook vector D.", minimum=1),
        H("commitment", float, 0.25, "Weight β of the commitment loss.", minimum=0),
        H("vq_ema", bool, False, "EMA codebook updates instead of the codebook loss (appendix A.1)."),
        H("codebook_restart", bool, True, "Move codebook entries unused for a while onto recent encoder outputs.",
          reference="Dhariwal et al. 2020"),
        H("fsq_levels", str, "8,5,5,5", "Values per number of an FSQ code (--quantizer fsq): D = their count, "
          "K = their product.", parse=parse_levels),
        H("prior_filters", int, 64, "Channels of each gated PixelCNN prior (trained by fit-prior).", minimum=1),
        H("prior_layers", int, None, "Gated layers of each PixelCNN prior (default: enough for every position to "
          "see all earlier ones, max(4, h − 3, w − 2); on a row of codes along time, kernel 7 and at most 12 layers: "
          "37 codes back).", minimum=1, nullable=True),
    )
    # Its decoder reads quantized code maps: the pixelcnn decoder is not offered here.
    unused_hyperparameters = ("latent_dim", "decoder", "decoder_layers", "decoder_filters", "decoder_dropout")
    continuous_code = False
    levels = ("",)

    def __init__(self, image_shape, **kwargs):
        super().__init__(image_shape, **kwargs)
        self.grids = self.code_grids()
        for level in self.levels:
            setattr(self, keyed("quantizer", level), self.make_quantizer(keyed("quantizer", level)))
        for level in self.levels:
            above = self.prior_condition(level)
            kernel_size, layers = prior_shape(self.grids[level], self.prior_layers)
            network = pixelcnn.build_pixelcnn(
                self.grids[level], self.num_codes, self.prior_filters, layers, name=keyed("prior_network", level),
                condition_grid=self.grids[above] if above else None, condition_codes=self.num_codes if above else None,
                kernel_size=kernel_size)
            network.trainable = False  # trained apart, by `fit-prior`
            setattr(self, keyed("prior_network", level), network)
        self.prior_fitted = self.add_weight(shape=(), initializer="zeros", trainable=False, name="prior_fitted",
                                            dtype="float32")

    # ----------------------------------------------------------- structure
    def code_grids(self):
        """{level: (h, w)} of the code maps."""
        raise NotImplementedError

    def prior_condition(self, level):
        """The level whose codes condition `level`'s prior (None: unconditional)."""
        return None

    @property
    def vector_dim(self):
        """D, the numbers per quantized vector."""
        return len(parse_levels(self.fsq_levels)) if self.quantizer_name == "fsq" else self.codebook_dim

    @property
    def num_codes(self):
        """The size of each level's code alphabet."""
        return math.prod(parse_levels(self.fsq_levels)) if self.quantizer_name == "fsq" else self.codebook_size

    @property
    def code_dim(self):
        """The continuous code `encode` returns: every level's vectors, flattened and concatenated."""
        return sum(h * w for h, w in self.grids.values()) * self.vector_dim

    def make_quantizer(self, name):
        if self.quantizer_name == "fsq":
            return FiniteScalarQuantizer(parse_levels(self.fsq_levels), name=name)
        return VectorQuantizer(self.codebook_size, self.codebook_dim, self.commitment, self.vq_ema,
                               self.codebook_restart, name=name)

    def quantizer_of(self, level):
        return getattr(self, keyed("quantizer", level))

    def prior_of(self, level):
        return getattr(self, keyed("prior_network", level))

    def code_name(self, level):
        """The name of a level's code maps in the exports: `indices`, or `indices_top`, `indices_bottom`."""
        return keyed("indices", level)

    def metric_names(self):
        per_level = tuple(keyed(name, level) for level in self.levels for name in ("perplexity", "used_codes"))
        return ("loss", "elbo", "reconstruction_loss", "kl", "vq_loss") + per_level

    # ------------------------------------------------------------ the code
    def quantize_levels(self, x, training=False, seed=None):
        """{level: quantizer output (`indices` [B, h, w], `quantized` [B, h, w, D], `loss` [B, h, w])
        plus `vectors`, the encoder's z_e [B, h, w, D] in float32}."""
        raise NotImplementedError

    def decode_quantized(self, quantized, training=False, y=None):
        """The decoder's raw output for {level: quantized vectors [B, h, w, D]} (and labels y [B] of a
        conditional model)."""
        raise NotImplementedError

    def encode_indices(self, x):
        """{level: int32 code maps [B, h, w]}."""
        return {level: out["indices"] for level, out in self.quantize_levels(x).items()}

    def decode_indices(self, codes, y=None):
        """The decoder mean [B, H, W, C] for {level: code maps [B, h, w]} (for a conditional model: as
        labels y [B] say, e.g. in another speaker's voice)."""
        quantized = {level: self.quantizer_of(level).lookup(codes[level]) for level in self.levels}
        return self.likelihood_layer.mean(self.decode_quantized(quantized, y=y))

    def encode(self, x, y=None):
        """The encoder's continuous output z_e of every level, flattened [B, code_dim], and zero spread."""
        outputs = self.quantize_levels(x)
        vectors = tf.concat([tf.reshape(outputs[level]["vectors"], [tf.shape(x)[0], -1]) for level in self.levels], 1)
        return vectors, tf.zeros_like(vectors)

    def probe_features(self, x, y=None):
        """The code maps as the decoder reads them: every level's quantized vectors, flattened [B, code_dim]."""
        codes = self.encode_indices(x)
        return tf.concat([tf.reshape(self.quantizer_of(level).lookup(codes[level]), [tf.shape(x)[0], -1])
                          for level in self.levels], 1)

    def decode(self, z, y=None):
        """Continuous codes [B, code_dim] (as `encode` gives) are quantized level by level, then decoded."""
        z, quantized, start = tf.cast(z, tf.float32), {}, 0
        for level in self.levels:
            h, w = self.grids[level]
            size = h * w * self.vector_dim
            vectors = tf.reshape(z[:, start : start + size], [-1, h, w, self.vector_dim])
            quantized[level] = self.quantizer_of(level)(vectors)["quantized"]
            start += size
        return self.likelihood_layer.mean(self.decode_quantized(quantized, y=y))

    # ------------------------------------------------------------- the prior
    def level_log_priors(self, codes):
        """{level: log p(c_level | the levels above) [B]} of {level: code maps}: uniform (h·w·log K) until
        `fit-prior`, then the PixelCNNs'."""
        batch = tf.shape(codes[self.levels[0]])[:1]

        def fitted():
            return {level: pixelcnn.code_log_prob(self.prior_of(level), codes[level], self.condition_codes(level, codes))
                    for level in self.levels}

        def uniform():
            return {level: tf.fill(batch, -math.prod(self.grids[level]) * math.log(self.num_codes))
                    for level in self.levels}

        return tf.cond(self.prior_fitted > 0.5, fitted, uniform)

    def code_log_prior(self, codes):
        """log p(c) [B] of {level: code maps}, all levels."""
        return tf.add_n(list(self.level_log_priors(codes).values()))

    def condition_codes(self, level, codes):
        above = self.prior_condition(level)
        return codes[above] if above else None

    def sample_indices(self, num_samples, seed, temperature=1.0):
        """{level: code maps [N, h, w]} from the prior, level by level (stateless in `seed`, an int scalar)."""
        seed = tf.stack([tf.cast(seed, tf.int32), tf.constant(0, tf.int32)])

        def from_priors():
            codes = {}
            for i, level in enumerate(self.levels):
                codes[level] = pixelcnn.sample_codes(
                    self.prior_of(level), num_samples, self.grids[level],
                    tf.random.experimental.stateless_fold_in(seed, i), temperature, self.condition_codes(level, codes))
            return codes

        def uniform():
            return {level: tf.random.stateless_uniform(
                [num_samples, *self.grids[level]], seed=tf.random.experimental.stateless_fold_in(seed, i),
                maxval=self.num_codes, dtype=tf.int32) for i, level in enumerate(self.levels)}

        return tf.cond(self.prior_fitted > 0.5, from_priors, uniform)

    def sample(self, num_samples, seed=0, temperature=1.0, y=None):
        """(x_mean [N, H, W, C], {level: code maps [N, h, w]}) drawn from the code prior."""
        codes = self.sample_indices(num_samples, seed, temperature)
        if self.uses_labels and y is None:
            y = tf.range(num_samples) % self.num_classes  # every label in turn
        return self.decode_indices(codes, y), codes

    # ---------------------------------------------------------- objective
    def compute_terms(self, x, training=False, y=None):
        outputs = self.quantize_levels(self.corrupt(x, training), training, self.noise_seed() if training else None)
        decoded = self.decode_quantized({level: out["quantized"] for level, out in outputs.items()}, training, y)
        reconstruction_loss = -self.likelihood_layer(decoded).log_prob(x)
        vq_loss = tf.add_n([tf.reduce_sum(out["loss"], axis=[1, 2]) for out in outputs.values()])  # (B,)
        kl = -self.code_log_prior({level: out["indices"] for level, out in outputs.items()})
        usage = {}
        for level, out in outputs.items():
            usage[keyed("perplexity", level)] = perplexity(out["indices"], self.num_codes)
            usage[keyed("used_codes", level)] = used_codes(out["indices"])
        return elbo_terms(reconstruction_loss, kl, vq_loss=vq_loss, **usage)

    def regularizer(self, terms, beta):
        # The prior's term is constant for the autoencoder (the PixelCNNs are trained apart).
        return tf.reduce_mean(terms["vq_loss"])

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """A point-mass posterior: every 'sample' has log weight log p(x | z_q) + log p(c) = the ELBO."""
        codes = self.encode_indices(x)
        quantized = {level: self.quantizer_of(level).lookup(codes[level]) for level in self.levels}
        log_weight = (self.likelihood_layer(self.decode_quantized(quantized, y=y)).log_prob(x)
                      + self.code_log_prior(codes))
        return tf.tile(log_weight[None], [num_samples, 1]), log_weight

    def serving_signatures(self, max_samples=None):
        from keras_vae.serving import code_map_signatures

        return code_map_signatures(self, max_samples)


@register_model("vq_vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class VQVAE(CodeMapAutoencoder):
    """The VQ-VAE: a grid of `latent_dim` discrete codes, through the `architecture`'s networks.

    On signals [T, C] with `--architecture conv1d` the code map is one row of `latent_dim` codes along time,
    each read from (and decoded to) T / latent_dim steps by fully convolutional networks, as the paper's
    speech model (section 4.3). With `condition` the decoder also reads a learned embedding of a label
    (`--condition speaker`), so the codes need not carry it and decoding them with another label converts
    (e.g. the voice).

    Args (besides `CodeMapAutoencoder`'s):
        num_classes: the values the condition's labels take (from the dataset), when conditional.
    """

    hyperparameters = (
        # Its own declaration: a count of code positions, not a latent size, so no dataset default applies.
        H("latent_dim", int, 16, "Code positions h·w of the code map (as square a grid as h·w allows; on signals "
          "with conv1d, codes along time).", minimum=1),
        H("condition", str, "none", "Labels the decoder reads besides the codes: none, label (the dataset's y) or "
          "a factor's name (fsdd: speaker, digit).", reference="van den Oord et al. 2017"),
        H("condition_dim", int, 64, "Size of the learned embedding of the condition's label.", minimum=1),
    )

    def __init__(self, image_shape, num_classes=0, **kwargs):
        condition = kwargs.get("condition", "none")
        self.uses_labels = condition != "none"  # an instance attribute: whether depends on the configuration
        self.label_name = condition
        self.num_classes = int(num_classes)
        if self.uses_labels and self.num_classes < 2:
            raise UserError(f"vq_vae --condition {condition} needs labels of at least 2 values; the dataset's "
                            f"{condition!r} labels have {self.num_classes}.")
        super().__init__(image_shape, **kwargs)
        if self.uses_labels:
            self.label_embedding = keras.layers.Embedding(self.num_classes, self.condition_dim, name="label_embedding")
            self.label_embedding.build((None,))  # its weights exist before an optimizer or a checkpoint meets them

    @property
    def along_time(self):
        """Whether the code map is a row of codes along the time of a signal."""
        return len(self.image_shape) == 2 and self.architecture == "conv1d"

    def code_grids(self):
        return {"": (1, self.latent_dim) if self.along_time else code_grid(self.latent_dim)}

    def build_networks(self):
        extra = self.condition_dim if self.uses_labels else 0
        if self.along_time:
            return conv1d_code_networks(self.image_shape, self.latent_dim, self.vector_dim, self.decoder_channels(),
                                        extra)
        size = self.latent_dim * self.vector_dim  # h·w vectors of D numbers, flattened
        return build_networks(self.architecture, self.image_shape, size + extra, size, self.decoder_channels())

    def quantize_levels(self, x, training=False, seed=None):
        vectors = tf.reshape(tf.cast(self.encoder(x, training=training), tf.float32),
                             [-1, *self.grids[""], self.vector_dim])
        return {"": dict(self.quantizer(vectors, training=training, seed=seed), vectors=vectors)}

    def decode_quantized(self, quantized, training=False, y=None):
        shape = [self.latent_dim, self.vector_dim] if self.along_time else [self.latent_dim * self.vector_dim]
        h = tf.reshape(quantized[""], [-1, *shape])
        if self.uses_labels:
            if y is None:
                raise UserError(f"This vq_vae is conditioned on {self.label_name!r}: give its labels y.")
            embedding = tf.cast(self.label_embedding(tf.cast(y, tf.int32)), h.dtype)  # (B, E)
            if self.along_time:  # the same embedding at every code position
                embedding = tf.tile(embedding[:, None, :], [1, self.latent_dim, 1])
            h = tf.concat([h, embedding], axis=-1)
        return self.decoder(h, training=training)

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes)
