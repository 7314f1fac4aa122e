"""An autoregressive prior over a stack of spatial latent maps, trained with the model.

The maps ε_0, ε_1, … (each [h_g, w_g, c_g], coarse first, every side of a finer
map an integer multiple of a coarser one's) are drawn one after the other, and
each position of a map given the positions before it in raster order and all
of the maps above:

    p(ε) = Π_g Π_i p(ε_g,i | ε_g,<i, ε_<g),
    p(ε_g,i | ·) = Σ_m π_m N(μ_m, diag σ_m²) over the c_g channels of position i,

with (π, μ, σ) the outputs at i of a gated PixelCNN over ε_g (`pixelcnn`, fed
float maps), conditioned on the maps above: upsampled (nearest) to its grid
and read by 'same' 3×3 Swish convolutions dilated 1, 2, 4, … until every position
sees the whole grid (they are known before ε_g is drawn, so no mask is due;
the PixelCNN alone reads its condition only at each position's own place).
This is PixelVAE's prior (Gulrajani et al. 2017): a hierarchy whose latent
maps have autoregressive priors, so that what a position holds can depend on
its neighbours' draws, where a factorized Gaussian prior draws every position
of a group independently given the groups above. Its log-density is exact and
takes one pass of each network; drawing takes one pass per position.

Each network's last layer starts at zero weights, with the components' means
spread as N(0, `LOC_SPREAD`²) by its bias and every scale at 1 (plus the
floor, `priors.SCALE_FLOOR`): at the start every position is an equal
mixture of unit Gaussians near 0, i.e. the prior starts near N(0, I).

References:
    Gulrajani, Kumar, Ahmed, Taiga, Visin, Vazquez & Courville (2017). PixelVAE: A Latent Variable Model
        for Natural Images. ICLR.
    van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu (2016). Conditional Image
        Generation with PixelCNN Decoders. NeurIPS.
    Salimans, Karpathy, Chen & Kingma (2017). PixelCNN++. ICLR: a mixture per position, its scales floored.
"""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae import pixelcnn
from keras_vae.priors import SCALE_FLOOR

tfd = tfp.distributions

LOC_SPREAD = 0.3  # of the components' means at the start (their bias), so that the components differ
EXTRA_LAYERS = 1  # gated layers past the fewest that let every position read all earlier ones
SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(SOFTPLUS_ONE) = 1: a zero output is a unit scale


def parameter_count(channels, components):
    """Outputs per position: M logits, M·C means and M·C raw scales."""
    return components * (1 + 2 * channels)


def condition_dilations(grid_shape):
    """Dilations 1, 2, 4, … of 3×3 convolutions whose stack lets every position of the grid read every other
    (receptive field 1 + 2 Σ d ≥ 2 max(h, w) − 1); at least one."""
    dilations = [1]
    while 1 + 2 * sum(dilations) < 2 * max(grid_shape) - 1:
        dilations.append(2 * dilations[-1])
    return dilations


def build_network(shape, above, components, filters, name):
    """The network of one map (h, w, c) under `above` channels of maps above (0 for the top map): from
    [codes [B, h, w, c], condition [B, h, w, above]] (codes alone for the top map) to the parameters
    [B, h, w, `parameter_count`]."""
    height, width, channels = shape
    layers = pixelcnn.covering_depth((height, width)) + EXTRA_LAYERS
    count = parameter_count(channels, components)
    if not above:
        return pixelcnn.build_pixelcnn((height, width), count, filters, layers, name=name, input_channels=channels)
    inner = pixelcnn.build_pixelcnn((height, width), count, filters, layers, name=f"{name}_pixelcnn",
                                    condition_channels=filters, input_channels=channels)
    condition = keras.Input((height, width, above), name="condition")
    features = condition
    for dilation in condition_dilations((height, width)):
        features = keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, activation="swish")(features)
    reader = keras.Model(condition, features, name=f"{name}_condition")
    codes = keras.Input(shape, name="codes")
    return keras.Model([codes, condition], inner([codes, reader(condition)]), name=name)


def parts(network):
    """(the condition's reader, or None for the top map, and the PixelCNN) of a map's network, so that drawing
    can read the condition once for all positions."""
    nested = {layer.name: layer for layer in network.layers if isinstance(layer, keras.Model)}
    if not nested:
        return None, network
    return nested[f"{network.name}_condition"], nested[f"{network.name}_pixelcnn"]


def head_of(network):
    """The last layer of a map's network, whose outputs are its positions' parameters."""
    return parts(network)[1].get_layer("logits")


def build_networks(shapes, components, filters, seed=0, name="top_prior"):
    """One network per map of `shapes` ([(h, w, c)], coarse first; `build_network`): map g's reads float maps
    [B, h, w, c] and, for g > 0, the maps above as one condition [B, h, w, Σ c_<g] (`context`); its outputs are
    the `parameter_count` parameters of each position's mixture (`position_mixture`)."""
    networks = []
    rng = np.random.default_rng(seed)
    for g, (height, width, channels) in enumerate(shapes):
        above = sum(shape[2] for shape in shapes[:g])
        network = build_network((height, width, channels), above, components, filters, f"{name}_{g}")
        head = head_of(network)
        head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
        loc = rng.normal(0.0, LOC_SPREAD, components * channels)
        head.bias.assign(np.concatenate([np.zeros(components), loc, np.zeros(components * channels)]).astype(np.float32))
        networks.append(network)
    return networks


def position_mixture(params, channels, components):
    """The mixture Σ_m π_m N(μ_m, diag σ_m²) over C channels at every position of `params` [..., M(1 + 2C)]
    (batch shape [...], event [C]): logits, then the means and the raw scales, component-major; σ =
    softplus(raw + softplus⁻¹(1)) + `SCALE_FLOOR`."""
    params = tf.cast(params, tf.float32)
    logits, loc, raw = tf.split(params, [components, components * channels, components * channels], -1)
    shape = tf.concat([tf.shape(logits), [channels]], 0)  # [..., M, C]
    loc, raw = tf.reshape(loc, shape), tf.reshape(raw, shape)
    scale = tf.nn.softplus(raw + SOFTPLUS_ONE) + SCALE_FLOOR
    return tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                 tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1))


def context(maps, shape):
    """The maps above [B, h_k, w_k, c_k], each upsampled (nearest) to `shape` (h, w, ·) and stacked on the
    channels: [B, h, w, Σ c_k]; None when there are none."""
    if not maps:
        return None
    grown = []
    for m in maps:
        rows, columns = shape[0] // m.shape[1], shape[1] // m.shape[2]
        grown.append(tf.repeat(tf.repeat(m, rows, axis=1), columns, axis=2))
    return tf.concat(grown, -1)


def network_params(network, maps, g, shape):
    """The network of map g on `maps[g]`, conditioned on the maps above it."""
    return network(pixelcnn.network_inputs(maps[g], context(maps[:g], shape)))


def group_log_probs(networks, shapes, components, maps):
    """log p(ε_g | ε_<g) [B, G] of each of the maps [B, h_g, w_g, c_g] (coarse first) given the maps above it, by
    teacher forcing: one pass of each network. They sum to log p(ε)."""
    return tf.stack([tf.reduce_sum(position_mixture(network_params(network, maps, g, shape), shape[2], components)
                                   .log_prob(tf.cast(maps[g], tf.float32)), [1, 2])
                     for g, (network, shape) in enumerate(zip(networks, shapes))], -1)


def log_prob(networks, shapes, components, maps):
    """log p(ε) [B] of maps [B, h_g, w_g, c_g] (coarse first) by teacher forcing: one pass of each network."""
    return tf.reduce_sum(group_log_probs(networks, shapes, components, maps), -1)


def draw_map(network, shape, components, above, noise, seed):
    """Map [N, h, w, c] drawn position by position in raster order given the maps `above`: at position i a
    component from π (a stateless draw at fold_in(seed, i)), then μ + σ·noise[:, i] (`noise` [N, h·w, c]
    carries the temperature). One `tf.while_loop`, so a traced graph holds one copy of the network; the maps
    above are read once, before it."""
    height, width, channels = shape
    positions = height * width
    reader, inner = parts(network)
    features = None if reader is None else reader(context(above, shape))

    def draw(position, values):  # values (N, h·w, c), zero from `position` on
        current = tf.reshape(values, [-1, height, width, channels])
        params = inner(pixelcnn.network_inputs(current, features))
        params = tf.gather(tf.reshape(params, [tf.shape(values)[0], positions, -1]), position, axis=1)
        mixture = position_mixture(params, channels, components)
        k = tf.random.stateless_categorical(mixture.mixture_distribution.logits, 1,
                                            seed=tf.random.experimental.stateless_fold_in(seed, position))[:, 0]
        normal = mixture.components_distribution.distribution
        loc, scale = (tf.gather(t, k, axis=1, batch_dims=1) for t in (normal.loc, normal.scale))  # (N, c)
        value = loc + scale * tf.gather(noise, position, axis=1)
        return position + 1, tf.where((tf.range(positions) == position)[None, :, None], value[:, None], values)

    values = tf.zeros_like(noise)
    _, values = tf.while_loop(lambda position, _: position < positions, draw, (tf.constant(0), values),
                              maximum_iterations=positions)
    return tf.reshape(values, [-1, height, width, channels])


def draws(networks, shapes, components, noise, seed, given=()):
    """Maps drawn from the prior: the `given` maps kept (the first len(given) of `shapes`), every later one
    drawn by `draw_map` given those above it. `noise` [N, Σ h·w·c] is each drawn value's Gaussian noise,
    times the temperature (the given maps' share is unused); `seed` ([2] int) draws the components."""
    maps = [tf.cast(m, tf.float32) for m in given]
    offsets = np.cumsum([0] + [math.prod(shape) for shape in shapes])
    noise = tf.cast(noise, tf.float32)
    for g in range(len(given), len(shapes)):
        part = tf.reshape(noise[:, offsets[g]:offsets[g + 1]], [-1, shapes[g][0] * shapes[g][1], shapes[g][2]])
        maps.append(draw_map(networks[g], shapes[g], components, maps, part,
                             tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), g)))
    return maps
