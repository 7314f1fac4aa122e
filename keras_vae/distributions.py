"""Keras 3 layers that turn network outputs into `tfp.distributions` objects.

These replace the Keras-2-only `tfp.layers`. Each layer computes in float32
whatever the model's dtype policy is, so that under mixed precision the
distribution parameters, log-probabilities and KL stay in float32.
"""

import contextlib

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.errors import UserError

tfd = tfp.distributions

_MIN_SCALE = 1e-4


def _softplus_scale(raw):
    return tf.nn.softplus(raw) + _MIN_SCALE


def _exp_scale(raw):
    # Clipped so that exp neither overflows nor underflows to a zero scale.
    return tf.exp(tf.clip_by_value(raw, -9.0, 9.0)) + _MIN_SCALE


SCALE_FUNCTIONS = {"softplus": _softplus_scale, "exp": _exp_scale}

_PADDING_MASKS = []  # the masks of the enclosing `padding_mask` blocks, innermost last (a trace-time stack)


@contextlib.contextmanager
def padding_mask(mask):
    """Within the block, the likelihoods score only the real steps of fixed-length signals.

    Args:
        mask: [B, T], 1 where a clip has data and 0 in its padding, or None (nothing masked). A likelihood
            over a batch of m·B examples (K importance samples, sample-major, as `tf.reshape` of [K, B, ...]
            makes) repeats it m times.

    Clips cut or padded to one length (`keras_vae.audio.fit_length`) keep their padding out of log p(x|z):
    the padded steps add exactly 0 nats (`tfd.Masked`). The block is entered where the batch is unpacked, so
    the models' own code does not change.
    """
    _PADDING_MASKS.append(None if mask is None else tf.cast(mask, tf.bool))
    try:
        yield
    finally:
        _PADDING_MASKS.pop()


def independent(base, event_ndims):
    """`tfd.Independent(base, event_ndims)` over an example's axes, less the padded steps (the first event axis)
    when a `padding_mask` is active."""
    mask = _PADDING_MASKS[-1] if _PADDING_MASKS else None
    if mask is None:
        return tfd.Independent(base, reinterpreted_batch_ndims=event_ndims)
    per_step = tfd.Independent(base, reinterpreted_batch_ndims=event_ndims - 1)  # batch [m·B, T]
    repeats = per_step.batch_shape_tensor()[0] // tf.shape(mask)[0]
    return tfd.Independent(tfd.Masked(per_step, tf.tile(mask, [repeats, 1])), reinterpreted_batch_ndims=1)


@keras.saving.register_keras_serializable(package="keras_vae")
class NormalPosterior(keras.layers.Layer):
    """Diagonal Gaussian q(z|x) from a fused [B, 2L] parameter tensor.

    Args:
        latent_dim: L, the number of latent dimensions.
        scale_function: "softplus" (default) or "exp"; maps the raw scale
            parameter to a positive standard deviation (floored at 1e-4).
        max_scale: an upper bound on the standard deviation, or None. With
            one, scale = max(max_scale · sigmoid(raw), 1e-4) and `scale_function`
            is not used (the δ-VAE's bounded posterior).

    Call arguments:
        params: float tensor [B, 2L]: the means, then the raw scales.

    Returns:
        `tfd.Independent(tfd.Normal(loc, scale), 1)` with batch [B], event [L].
    """

    def __init__(self, latent_dim, scale_function="softplus", max_scale=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.built = True  # no shape-dependent weights: Keras needs no symbolic call to build it
        if scale_function not in SCALE_FUNCTIONS:
            raise UserError(
                f"scale_function must be one of {', '.join(SCALE_FUNCTIONS)}. "
                f"Received: scale_function={scale_function!r}."
            )
        self.latent_dim = latent_dim
        self.scale_function = scale_function
        self.max_scale = None if max_scale is None else float(max_scale)

    def parameters(self, params):
        """Splits and maps raw parameters: returns (loc, scale), each [B, L] float32."""
        params = tf.cast(params, tf.float32)
        loc, raw_scale = tf.split(params, 2, axis=-1)  # (B, 2L) -> 2 x (B, L)
        if self.max_scale is not None:
            return loc, tf.maximum(self.max_scale * tf.sigmoid(raw_scale), _MIN_SCALE)
        return loc, SCALE_FUNCTIONS[self.scale_function](raw_scale)

    def call(self, params):
        loc, scale = self.parameters(params)
        return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim, scale_function=self.scale_function, max_scale=self.max_scale)
        return config


@keras.saving.register_keras_serializable(package="keras_vae")
class BernoulliLikelihood(keras.layers.Layer):
    """p(x|z) as independent Bernoullis, one per pixel, from decoder logits.

    Call arguments:
        logits: float tensor [B, H, W, C].

    Returns:
        `tfd.Independent(tfd.Bernoulli(logits), 3)`; its `mean()` is the
        per-pixel probability.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.built = True  # no shape-dependent weights: Keras needs no symbolic call to build it

    def call(self, logits):
        logits = tf.cast(logits, tf.float32)
        return independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), len(logits.shape) - 1)

    def mean(self, logits):
        """The decoder mean (pixel probabilities) without building a distribution."""
        return tf.sigmoid(tf.cast(logits, tf.float32))


@keras.saving.register_keras_serializable(package="keras_vae")
class GaussianLikelihood(keras.layers.Layer):
    """p(x|z) as independent Normals with the decoder output as mean.

    Args:
        channels: C, the number of image channels.
        scale: a fixed standard deviation, or None to learn one per channel
            (initialized at 1, i.e. as the σ-VAE of Rybkin et al. 2021).

    Call arguments:
        loc: float tensor [B, H, W, C].

    Returns:
        `tfd.Independent(tfd.Normal(loc, scale), 3)`.
    """

    def __init__(self, channels, scale=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.built = True  # no shape-dependent weights: Keras needs no symbolic call to build it
        self.channels = channels
        self.scale = scale
        if scale is None:
            self.raw_scale = self.add_weight(
                name="raw_scale",
                shape=(channels,),
                initializer=keras.initializers.Constant(0.5413),  # softplus^-1(1)
            )

    def stddev(self):
        if self.scale is None:
            return _softplus_scale(self.raw_scale)
        return tf.constant(self.scale, tf.float32)

    def call(self, loc):
        loc = tf.cast(loc, tf.float32)
        scale = tf.broadcast_to(self.stddev(), tf.shape(loc))
        return independent(tfd.Normal(loc, scale), len(loc.shape) - 1)

    def mean(self, loc):
        return tf.cast(loc, tf.float32)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="keras_vae")
class CategoricalLikelihood(keras.layers.Layer):
    """p(x|z) as an independent categorical per value over `classes` levels evenly spaced in [-1, 1]: the
    softmax over 256 μ-law levels of a waveform (van den Oord et al. 2016), or any data quantized so.

    Args:
        channels: C, the data's channels.
        classes: K, the levels.

    Call arguments:
        logits: float tensor [..., C·K] (the decoder's K logits per channel, channel-major).

    Returns:
        A `tfd.FiniteDiscrete` over the levels, independent over the example's axes: `log_prob(x)` scores
        values x on the levels (as `keras_vae.audio.mu_law_levels` makes them) exactly.
    """

    def __init__(self, channels, classes=256, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.built = True  # no shape-dependent weights: Keras needs no symbolic call to build it
        self.channels = channels
        self.classes = classes

    def levels(self):
        return tf.linspace(-1.0, 1.0, self.classes)

    def split(self, logits):
        """[..., C·K] -> [..., C, K] float32."""
        logits = tf.cast(logits, tf.float32)
        return tf.reshape(logits, tf.concat([tf.shape(logits)[:-1], [self.channels, self.classes]], 0))

    def call(self, logits):
        logits = self.split(logits)
        return independent(tfd.FiniteDiscrete(self.levels(), logits=logits), len(logits.shape) - 2)

    def mean(self, logits):
        """The expected level [..., C]."""
        return tf.tensordot(tf.nn.softmax(self.split(logits)), self.levels(), 1)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, classes=self.classes)
        return config


PIXEL_LEVELS = 256  # 8-bit data
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 1.0  # a logistic's log-scale in [-1, 1] units (1: e·128 levels, flat)


def mixture_mean(logits, loc):
    """A logistic mixture's mean value in [0, 1] from its logits [..., K] and locations [..., K, C] in levels
    (each location clipped to the levels' range)."""
    weights = tf.nn.softmax(logits)[..., None]  # [..., K, 1]
    return tf.reduce_sum(weights * tf.clip_by_value(loc, 0.0, PIXEL_LEVELS - 1.0), -2) / (PIXEL_LEVELS - 1)


class DiscretizedLogisticMixture:
    """A mixture of discretized logistics over 8-bit values (Salimans et al. 2017), scored on data in [0, 1].

    Each of K components is a logistic per channel, discretized to the 256 levels (the bin of level k is
    [k − ½, k + ½], the first and last bins reach to ∓∞), with the channels independent given the
    component and the component shared by a pixel's channels. Built from `tfd.QuantizedDistribution` and
    `tfd.MixtureSameFamily` over levels 0..255; `log_prob(x)` scores x/255-valued data on those levels
    (x·255 rounded), so it is an exact probability mass, and bits/dim need no offset.

    Args:
        logits: mixture logits [..., K].
        loc, scale: [..., K, C], in units of levels.
        event_ndims: the axes of an example besides the channels ([H, W]: 2).
    """

    def __init__(self, logits, loc, scale, event_ndims):
        self.logits, self.loc, self.scale = logits, loc, scale
        # Y = ceil(X) with X ~ Logistic(loc − ½, s): P(Y = k) = F(k + ½) − F(k − ½) for the logistic at loc.
        per_channel = tfd.QuantizedDistribution(tfd.Logistic(loc - 0.5, scale), low=0.0,
                                                high=float(PIXEL_LEVELS - 1))
        pixel = tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                      tfd.Independent(per_channel, reinterpreted_batch_ndims=1))
        self.levels = independent(pixel, event_ndims)

    def log_prob(self, x):
        """log P(x) for x [..., C] in [0, 1] on the 256 levels."""
        return self.levels.log_prob(tf.round(tf.cast(x, tf.float32) * (PIXEL_LEVELS - 1)))

    def mean(self):
        return mixture_mean(self.logits, self.loc)


@keras.saving.register_keras_serializable(package="keras_vae")
class LogisticMixtureLikelihood(keras.layers.Layer):
    """p(x|z) as a discretized logistic mixture per pixel over 8-bit values (`DiscretizedLogisticMixture`).

    Args:
        channels: C, the image's channels.
        components: K, the mixture's components (10, as Salimans et al. 2017 and NVAE).

    Call arguments:
        params: [..., K·(1 + 2C)]: the K mixture logits, then K·C locations in [-1, 1] (scaled to the
            levels), then K·C raw log-scales.
    """

    def __init__(self, channels, components=10, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.built = True  # no weights
        self.channels = channels
        self.components = components

    def parameters(self, params):
        """(logits [..., K], loc [..., K, C] in levels, scale [..., K, C] in levels) from the decoder output."""
        params = tf.cast(params, tf.float32)
        k, c = self.components, self.channels
        logits, loc, raw_scale = tf.split(params, [k, k * c, k * c], axis=-1)
        shape = tf.concat([tf.shape(params)[:-1], [k, c]], 0)
        half = (PIXEL_LEVELS - 1) / 2
        loc = (tf.tanh(tf.reshape(loc, shape)) + 1.0) * half
        # A log-scale floor of −7 in [-1, 1] units, as Salimans et al., and a soft ceiling: on data at the
        # extreme levels only (binary images) a wider logistic always puts more mass in both end bins, so
        # an unbounded scale runs off to inf (and the gradient to NaN) within a few steps. The ceiling is
        # smooth: it lowers a raw log-scale of 0 to −0.31 and one of −3 to −3.02 (the network learns around it).
        raw_scale = LOG_SCALE_MAX - tf.nn.softplus(LOG_SCALE_MAX - tf.reshape(raw_scale, shape))
        scale = tf.exp(tf.maximum(raw_scale, LOG_SCALE_MIN)) * half
        return logits, loc, scale

    def call(self, params):
        return DiscretizedLogisticMixture(*self.parameters(params), event_ndims=len(params.shape) - 2)

    def mean(self, params):
        """The decoder mean without building the distribution (the `decode` and serving path)."""
        logits, loc, _ = self.parameters(params)
        return mixture_mean(logits, loc)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, components=self.components)
        return config


def diagonal_normal(loc, scale, event_ndims=1):
    """Independent Normals whose last `event_ndims` axes make one event (a code [L], a latent map [h, w, c])."""
    return tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=event_ndims)


def split_seeds(seed, count=2):
    """`count` independent stateless seeds [count, 2] (int32, as tfp wants them) from one."""
    return tf.cast(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), count), tf.int32)


def standard_normal_prior(latent_dim):
    """p(z) = N(0, I) over `latent_dim` dimensions."""
    return tfd.Independent(
        tfd.Normal(tf.zeros([latent_dim]), tf.ones([latent_dim])), reinterpreted_batch_ndims=1
    )


@keras.saving.register_keras_serializable(package="keras_vae")
class DeterministicPosterior(keras.layers.Layer):
    """The code of a plain autoencoder: a point mass at the encoder output.

    Call arguments:
        params: float tensor [B, L].

    Returns:
        `tfd.Independent(tfd.Deterministic(params), 1)`.
    """

    def __init__(self, latent_dim, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.built = True  # no shape-dependent weights: Keras needs no symbolic call to build it
        self.latent_dim = latent_dim

    def parameters(self, params):
        """(code, zero stddev), each [B, L] float32."""
        code = tf.cast(params, tf.float32)
        return code, tf.zeros_like(code)

    def call(self, params):
        return tfd.Independent(tfd.Deterministic(tf.cast(params, tf.float32)), reinterpreted_batch_ndims=1)

    def get_config(self):
        config = super().get_config()
        config.update(latent_dim=self.latent_dim)
        return config
