"""Encoder and decoder architectures, by name.

Each builder returns `(encoder, decoder)`: the encoder maps images
[B, H, W, C] to `num_params` raw posterior parameters per example (the mean and
scale heads fused into one Dense layer), and the decoder maps codes [B, L] to
one output per pixel [B, H, W, C] (logits for a Bernoulli likelihood, means for
a Gaussian one).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_vae.errors import UserError
from keras_vae.registry import Registry

ARCHITECTURES = Registry("architecture")


def build_networks(name, image_shape, latent_dim, num_params, output_channels=None):
    """Builds the named architecture's encoder and decoder.

    Args:
        name: a registered architecture ("mlp", "conv", "conv-small").
        image_shape: (H, W, C) of the data.
        latent_dim: L.
        num_params: encoder outputs per example (2L for a diagonal Gaussian).
        output_channels: the decoder's channels per pixel when they are not the image's C (a feature map
            for an autoregressive likelihood): the decoder is then the architecture's for H × W × that.
    """
    builder = ARCHITECTURES.get(name)
    image_shape = tuple(image_shape)
    encoder, decoder = builder(image_shape, latent_dim, num_params)
    if output_channels is not None and output_channels != image_shape[-1]:
        _, decoder = builder((*image_shape[:-1], output_channels), latent_dim, num_params)
    return encoder, decoder


@ARCHITECTURES.register("mlp")
def mlp(image_shape, latent_dim, num_params, hidden=(1024, 1024), activation="relu", layer=None):
    """Fully connected encoder and decoder with two ReLU hidden layers of 1024 units.

    1024 rather than the usual 512 was chosen by measurement (scripts/benchmark.py):
    on Fashion-MNIST, 10 epochs, it lowered test -log p(x) by 1.2 nats, and its
    larger matrix products run nearer the CPU's matmul peak. `layer(units)` builds
    each hidden layer (default: Dense with `activation`).
    """
    layer = layer or (lambda units: keras.layers.Dense(units, activation=activation))
    size = math.prod(image_shape)
    encoder = keras.Sequential(
        [keras.Input(image_shape), keras.layers.Flatten()]
        + [layer(units) for units in hidden]
        + [keras.layers.Dense(num_params, name="posterior_params")],
        name="encoder",
    )
    decoder = keras.Sequential(
        [keras.Input((latent_dim,))]
        + [layer(units) for units in reversed(hidden)]
        + [keras.layers.Dense(size), keras.layers.Reshape(image_shape)],
        name="decoder",
    )
    return encoder, decoder


@ARCHITECTURES.register("mlp-200-tanh")
def mlp_200_tanh(image_shape, latent_dim, num_params):
    """Burda et al. (2016)'s one-stochastic-layer networks: two tanh hidden layers of 200 units each way."""
    return mlp(image_shape, latent_dim, num_params, hidden=(200, 200), activation="tanh")


@keras.saving.register_keras_serializable(package="keras_vae")
class GatedDense(keras.layers.Layer):
    """h = (x W + b) ⊙ σ(x V + c), the gated hidden layer of Tomczak & Welling (2018)'s MLPs; W and V are
    one matrix product.

    Args:
        units: the width of h.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(2 * units)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        linear, gate = tf.split(self.dense(x), 2, axis=-1)  # (B, 2U) -> 2 x (B, U)
        return linear * tf.sigmoid(gate)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return dict(super().get_config(), units=self.units)


@ARCHITECTURES.register("mlp-gated")
def mlp_gated(image_shape, latent_dim, num_params):
    """The VampPrior paper's MLP (Tomczak & Welling 2018, also Exemplar VAE's): two gated layers of 300 units
    (`GatedDense`) each way."""
    return mlp(image_shape, latent_dim, num_params, hidden=(300, 300), layer=GatedDense)


@tf.custom_gradient
def add_bias(x, bias):
    """x + bias over the last axis, in x's dtype, with the bias's gradient summed in float32.

    Under mixed_bfloat16, TF's CPU kernels sum a bias gradient over batch × pixels (25k-100k terms
    for a 28x28 batch of 128) in bfloat16: measured 13-93% off in every convolution of `conv` and
    `conv-small` (tests/test_precision.py). Here only that sum changes: it is accumulated in float32
    (a product with a row of ones, which oneDNN accumulates in float32), measured as fast as Keras's
    own bias (`python scripts/precision_benchmark.py`).
    """
    def gradient(upstream):
        rows = tf.reshape(upstream, [-1, tf.shape(upstream)[-1]])  # (B, H, W, C) -> (B·H·W, C)
        # A matrix product with a row of ones: oneDNN accumulates it in float32 (and fast), so only
        # the final per-channel sums are rounded to the compute dtype.
        ones = tf.ones([1, tf.shape(rows)[0]], rows.dtype)
        return upstream, tf.cast(tf.matmul(ones, rows)[0], tf.float32)

    return x + tf.cast(bias, x.dtype), gradient


@keras.saving.register_keras_serializable(package="keras_vae")
class BiasAdd(keras.layers.Layer):
    """A float32 per-channel bias (its gradient summed in float32, see `add_bias`) and an activation.

    Follows a convolution built with `use_bias=False`; under float32 it computes exactly what the
    convolution's own bias would.

    Args:
        activation: applied after the bias.
    """

    def __init__(self, activation=None, **kwargs):
        super().__init__(autocast=False, **kwargs)  # the bias is read in float32, not the compute dtype
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, x):
        if x.dtype == tf.float32:
            return self.activation(x + self.bias)  # float32 sums are right already: TF's own gradient
        return self.activation(add_bias(x, tf.convert_to_tensor(self.bias)))  # a tensor: the gradient is ours

    def get_config(self):
        return dict(super().get_config(), activation=keras.activations.serialize(self.activation))


def convolution(layer, filters, kernel_size, strides=1, activation=None, kernel_initializer="glorot_uniform"):
    """[a bias-free convolution of type `layer`, its BiasAdd]: a convolution whose bias gradient is
    right under mixed precision."""
    return [layer(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                  kernel_initializer=kernel_initializer),
            BiasAdd(activation)]


def _check_divisible(name, image_shape, factor=4):
    if len(image_shape) != 3:
        raise UserError(f"The {name!r} architecture reads images [H, W, C]; the data are signals {list(image_shape)} "
                        "[T, C]. Use --architecture conv1d or mlp.")
    height, width, _ = image_shape
    if height % factor or width % factor:
        raise UserError(
            f"The {name!r} architecture needs image height and width divisible by {factor}. "
            f"Received: image_shape={image_shape}. Use --architecture mlp, or resize the images."
        )


@ARCHITECTURES.register("conv-small")
def conv_small(image_shape, latent_dim, num_params):
    """The canonical Keras VAE example's design, layer for layer.

    Encoder: Conv2D(32,3,s2) → Conv2D(64,3,s2) → Flatten → Dense(16) → params.
    Decoder: Dense(H/4·W/4·64) → Reshape → Conv2DTranspose(64,3,s2) →
    Conv2DTranspose(32,3,s2) → Conv2DTranspose(C,3) logits.
    """
    _check_divisible("conv-small", image_shape)
    height, width, channels = image_shape
    Conv2D, Conv2DTranspose = keras.layers.Conv2D, keras.layers.Conv2DTranspose
    encoder = keras.Sequential(
        [
            keras.Input(image_shape),
            *convolution(Conv2D, 32, 3, strides=2, activation="relu"),
            *convolution(Conv2D, 64, 3, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(num_params, name="posterior_params"),
        ],
        name="encoder",
    )
    decoder = keras.Sequential(
        [
            keras.Input((latent_dim,)),
            keras.layers.Dense(height // 4 * width // 4 * 64, activation="relu"),
            keras.layers.Reshape((height // 4, width // 4, 64)),
            *convolution(Conv2DTranspose, 64, 3, strides=2, activation="relu"),
            *convolution(Conv2DTranspose, 32, 3, strides=2, activation="relu"),
            *convolution(Conv2DTranspose, channels, 3),
        ],
        name="decoder",
    )
    return encoder, decoder


@ARCHITECTURES.register("conv")
def conv(image_shape, latent_dim, num_params):
    """A deeper convolutional pair: two conv blocks per resolution and a 256-unit bottleneck."""
    _check_divisible("conv", image_shape)
    height, width, channels = image_shape
    Conv2D, Conv2DTranspose = keras.layers.Conv2D, keras.layers.Conv2DTranspose
    encoder = keras.Sequential(
        [
            keras.Input(image_shape),
            *convolution(Conv2D, 32, 3, activation="relu"),
            *convolution(Conv2D, 32, 4, strides=2, activation="relu"),
            *convolution(Conv2D, 64, 3, activation="relu"),
            *convolution(Conv2D, 64, 4, strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(num_params, name="posterior_params"),
        ],
        name="encoder",
    )
    decoder = keras.Sequential(
        [
            keras.Input((latent_dim,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(height // 4 * width // 4 * 64, activation="relu"),
            keras.layers.Reshape((height // 4, width // 4, 64)),
            *convolution(Conv2DTranspose, 64, 4, strides=2, activation="relu"),
            *convolution(Conv2D, 64, 3, activation="relu"),
            *convolution(Conv2DTranspose, 32, 4, strides=2, activation="relu"),
            *convolution(Conv2D, 32, 3, activation="relu"),
            *convolution(Conv2D, channels, 3),
        ],
        name="decoder",
    )
    return encoder, decoder


def conv_64_encoder(image_shape, num_params):
    """`conv-64`'s encoder: four 4×4 stride-2 convolutions of 32, 32, 64 and 64 filters, a 256-unit layer."""
    down = [layer for filters in (32, 32, 64, 64)
            for layer in convolution(keras.layers.Conv2D, filters, 4, strides=2, activation="relu")]
    return keras.Sequential(
        [keras.Input(image_shape), *down, keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
         keras.layers.Dense(num_params, name="posterior_params")],
        name="encoder",
    )


@ARCHITECTURES.register("conv-64")
def conv_64(image_shape, latent_dim, num_params):
    """The convolutional pair of the disentanglement literature, made for 64×64 images (Higgins et al.
    2017, Locatello et al. 2019's disentanglement_lib): four 4×4 stride-2 convolutions of 32, 32, 64 and
    64 filters down to H/16, a 256-unit layer, and the mirror image up.

    Halving the resolution at every layer keeps it cheap: about 16 M multiply-adds per 64×64 image
    forward, near the 1024-1024 `mlp`'s 10 M, where `conv` (full-resolution layers) needs about 200 M.
    """
    _check_divisible("conv-64", image_shape, 16)
    height, width, channels = image_shape
    encoder = conv_64_encoder(image_shape, num_params)  # built first: the layers' default names as before
    Conv2DTranspose = keras.layers.Conv2DTranspose
    up = [layer for filters in (64, 32, 32)
          for layer in convolution(Conv2DTranspose, filters, 4, strides=2, activation="relu")]
    decoder = keras.Sequential(
        [keras.Input((latent_dim,)), keras.layers.Dense(256, activation="relu"),
         keras.layers.Dense(height // 16 * width // 16 * 64, activation="relu"),
         keras.layers.Reshape((height // 16, width // 16, 64)), *up,
         *convolution(Conv2DTranspose, channels, 4, strides=2)],
        name="decoder",
    )
    return encoder, decoder


@keras.saving.register_keras_serializable(package="keras_vae")
class SpatialBroadcast(keras.layers.Layer):
    """Codes [B, L] tiled over a height × width grid, with the grid's x and y coordinates in [-1, 1]
    appended: [B, height, width, L + 2] (Watters et al. 2019's spatial broadcast).

    Args:
        height, width: the grid's size.
    """

    def __init__(self, height, width, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = height, width
        ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
        self.coordinates = np.stack([xs, ys], axis=-1).astype(np.float32)[None]  # [1, height, width, 2]

    def call(self, z):
        batch = tf.shape(z)[0]
        tiled = tf.tile(z[:, None, None, :], [1, self.height, self.width, 1])
        coordinates = tf.tile(tf.cast(self.coordinates, z.dtype), [batch, 1, 1, 1])
        return tf.concat([tiled, coordinates], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1] + 2)

    def get_config(self):
        return dict(super().get_config(), height=self.height, width=self.width)


@ARCHITECTURES.register("broadcast-64")
def broadcast_64(image_shape, latent_dim, num_params):
    """`conv-64`'s encoder, and a spatial broadcast decoder (Watters et al. 2019) made cheap: the code is
    tiled over an H/4 × W/4 grid beside the grid's coordinates (`SpatialBroadcast`), two 3×3 convolutions
    of 64 filters there, then 4×4 stride-2 transposed convolutions of 32 and C filters up to H × W.

    A decoder that sees where each pixel is need not learn to route a shape through dense layers to its
    position. On 64×64 `sprites` at the quickstart's budget it reconstructed the shape in 92% of test
    images against `conv-64`'s 84%, and drew all three shapes (benchmarks/FIRST_RUN.md). The grid was
    chosen by measurement: H/8 lost the shapes' detail, H/2 cost more and learned slower. Watters et al.
    broadcast at full resolution, which costs about 10× more here. About 28 M multiply-adds per 64×64
    image forward (`conv-64`: 16 M), for 1.14× the quickstart's wall time.
    """
    _check_divisible("broadcast-64", image_shape, 16)
    height, width, channels = image_shape
    encoder = conv_64_encoder(image_shape, num_params)
    Conv2D, Conv2DTranspose = keras.layers.Conv2D, keras.layers.Conv2DTranspose
    decoder = keras.Sequential(
        [keras.Input((latent_dim,)), SpatialBroadcast(height // 4, width // 4),
         *convolution(Conv2D, 64, 3, activation="relu"), *convolution(Conv2D, 64, 3, activation="relu"),
         *convolution(Conv2DTranspose, 32, 4, strides=2, activation="relu"),
         *convolution(Conv2DTranspose, channels, 4, strides=2)],
        name="decoder",
    )
    return encoder, decoder


@ARCHITECTURES.register("conv1d")
def conv1d(signal_shape, latent_dim, num_params, filters=(32, 64, 128), kernel_size=4, hidden=256):
    """For 1-D signals [T, C] (audio, sensor series): stride-2 convolutions along time of 32, 64 and 128
    filters down to T/8, a 256-unit layer, and the mirror image up (transposed convolutions, then a
    kernel-3 convolution to the C output channels).

    The shape logic lives here, not in the models: any model whose likelihood is factorized reads [T, C]
    through it (or through `mlp`, which flattens whatever it is given).
    """
    if len(signal_shape) != 2:
        raise UserError(f"The 'conv1d' architecture reads signals [T, C]; the data are images {list(signal_shape)}. "
                        "Use an image architecture (mlp, conv, conv-small, conv-64).")
    length, channels = signal_shape
    factor = 2 ** len(filters)
    if length % factor:
        raise UserError(f"The 'conv1d' architecture needs a signal length divisible by {factor}. Received: "
                        f"T={length}. Pad or cut the signals, or use --architecture mlp.")
    Conv1D, Conv1DTranspose = keras.layers.Conv1D, keras.layers.Conv1DTranspose
    down = [layer for f in filters for layer in convolution(Conv1D, f, kernel_size, strides=2, activation="relu")]
    up = [layer for f in reversed(filters)
          for layer in convolution(Conv1DTranspose, f, kernel_size, strides=2, activation="relu")]
    encoder = keras.Sequential(
        [keras.Input(signal_shape), *down, keras.layers.Flatten(), keras.layers.Dense(hidden, activation="relu"),
         keras.layers.Dense(num_params, name="posterior_params")],
        name="encoder",
    )
    decoder = keras.Sequential(
        [keras.Input((latent_dim,)), keras.layers.Dense(hidden, activation="relu"),
         keras.layers.Dense(length // factor * filters[-1], activation="relu"),
         keras.layers.Reshape((length // factor, filters[-1])), *up, *convolution(Conv1D, channels, 3)],
        name="decoder",
    )
    return encoder, decoder


def conv1d_code_networks(signal_shape, positions, vector_dim, output_channels, extra_channels=0, channels=128,
                         residual_blocks=2):
    """Fully convolutional 1-D networks whose code is a row of `positions` vectors along time (the VQ-VAE's
    speech model, van den Oord et al. 2017, section 4.3): code t reads, and is decoded to, steps
    [t·s, (t + 1)·s) of the signal, s = T / positions.

    - encoder: [B, T, C] -> log2(s) stride-2 kernel-4 convolutions, a kernel-3 one, residual blocks
      (ReLU, kernel-3, ReLU, 1×1, added), a 1×1 to D -> [B, positions, D];
    - decoder: [B, positions, D + extra_channels] (a label's embedding at every position, joined again after
      every upsampling) -> the mirror image (transposed convolutions) -> [B, T, output_channels].
    """
    if len(signal_shape) != 2:
        raise UserError(f"conv1d code maps read signals [T, C]; the data are images {list(signal_shape)}.")
    length, _ = signal_shape
    stride = length // positions if positions and length % positions == 0 else 0
    if stride < 2 or stride & (stride - 1):
        raise UserError(f"A code row along time needs T / latent_dim to be a power of 2 (at least 2). Received: "
                        f"T={length}, --latent-dim {positions}. Try --latent-dim {max(1, length // 4)} (T/4) or "
                        f"{max(1, length // 8)} (T/8).")
    downsamplings = stride.bit_length() - 1
    Conv1D = keras.layers.Conv1D

    def residual(h):
        for _ in range(residual_blocks):
            r = Conv1D(channels // 2, 3, padding="same", activation="relu")(keras.layers.ReLU()(h))
            h = keras.layers.Add()([h, Conv1D(channels, 1)(r)])
        return keras.layers.ReLU()(h)

    x = keras.Input(signal_shape)
    h = x
    for _ in range(downsamplings):
        h = Conv1D(channels, 4, strides=2, padding="same", activation="relu")(h)
    h = residual(Conv1D(channels, 3, padding="same")(h))
    encoder = keras.Model(x, Conv1D(vector_dim, 1, name="code_vectors")(h), name="encoder")

    code = keras.Input((positions, vector_dim + extra_channels))
    # The extra channels (a speaker's embedding, the same at every position) join every upsampling stage too,
    # so the decoder's later layers read the voice directly.
    extra = keras.layers.Lambda(lambda c: c[..., vector_dim:])(code) if extra_channels else None
    h = residual(Conv1D(channels, 3, padding="same")(code))
    for stage in range(downsamplings):
        h = keras.layers.Conv1DTranspose(channels, 4, strides=2, padding="same", activation="relu")(h)
        if extra is not None:
            h = keras.layers.Concatenate()([h, keras.layers.UpSampling1D(2 ** (stage + 1))(extra)])
    decoder = keras.Model(code, Conv1D(output_channels, 3, padding="same")(h), name="decoder")
    return encoder, decoder


def condition_encoder(encoder, num_classes):
    """`encoder` with a one-hot label [B, K] joined to the image features where they are flattened.

    For `mlp` that is the input itself (Kingma et al. 2014's M2, Sohn et al.
    2015); for the conv designs, the convolutional features. The layers up to
    the Flatten are shared with `encoder`; the ones after it are rebuilt with
    the wider input.

    Returns:
        A functional model taking [images, one_hot].
    """
    layers = encoder.layers
    split = next((i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Flatten)), None)
    if split is None:
        raise UserError(f"The encoder {encoder.name!r} has no Flatten layer to join a label to.")
    images = keras.Input(encoder.input_shape[1:], name="images")
    one_hot = keras.Input((num_classes,), name="one_hot")
    h = images
    for layer in layers[: split + 1]:
        h = layer(h)
    h = keras.layers.Concatenate()([h, one_hot])
    for layer in layers[split + 1 :]:
        h = layer.__class__.from_config(layer.get_config())(h)
    return keras.Model([images, one_hot], h, name=encoder.name)
