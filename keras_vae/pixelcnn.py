"""A gated PixelCNN over a grid of discrete codes: the learned prior of a VQ-VAE.

p(c) = Π_i p(c_i | c_<i [, s]) in raster order over an [h, w] grid of
indices in 0..K-1, optionally conditioned on a coarser map of codes s, as the
bottom prior of VQ-VAE-2 is conditioned on the top codes (Razavi et al. 2019).

Two streams of features (van den Oord et al. 2016, Conditional PixelCNN):
the vertical stream v[i, j] reads only the rows above (< i), the horizontal
stream h[i, j] those rows and row i left of j (< j). Causality comes from
padding and shifting instead of masked kernels (Salimans et al. 2017,
PixelCNN++), which makes it exact and leaves no blind spot:

    down conv, kernel (kh, kw):        out[i, j] reads rows i-kh+1..i, columns j-kw//2..j+kw//2
    down-right conv, kernel (kh, kw):  out[i, j] reads rows i-kh+1..i, columns j-kw+1..j
    v₀ = ↓ down_conv_(2,k)(x)                        (rows i-2..i-1)
    h₀ = ↓ down_conv_(1,k)(x) + → down_right_conv_(2,1)(x)   (row i-1; row i at column j-1)

with ↓ / → a shift by one row down / one column right (zeros coming in) and
x the embedded codes. Each gated layer ℓ (eq. 2–5 of van den Oord et al.
2016) with F filters and features s of the condition:

    a_v = down_conv_(2,k)(v) + V_v s                        (2F channels)
    a_h = down_right_conv_(2,k//2+1)(h) + W a_v + V_h s     (W, V: 1×1 convolutions)
    v ← v + tanh(a_v[:F]) ⊙ σ(a_v[F:])
    h ← h + U (tanh(a_h[:F]) ⊙ σ(a_h[F:]))

A down conv of v at row i reads v at rows i-1..i, which themselves read the
codes above row i, so v keeps its property; W a_v feeds h what lies above
and to the right, which h may see. Each layer widens v by k//2 columns each
side and one row up, and moves h k//2 columns to the left, so the logits at
(i, j) read every earlier position once the layers cover the grid (about
max(h − 3, w − 2) layers for k = 3), with no holes in between.

The logits are ReLU → 1×1 → ReLU → 1×1 of h, the last in float32 so that a
mixed-precision policy still gives float32 logits. The condition s (codes
[hc, wc] with h = f·hc, w = f·wc) is embedded, upsampled f× (nearest) and
passed through two 3×3 'same' convolutions: it is not causal, all of it is
known before sampling.

References:
    van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu (2016). Conditional Image
        Generation with PixelCNN Decoders. NeurIPS.
    Salimans, Karpathy, Chen & Kingma (2017). PixelCNN++: Improving the PixelCNN with Discretized
        Logistic Mixture Likelihood and Other Modifications. ICLR.
    van den Oord, Vinyals & Kavukcuoglu (2017). Neural Discrete Representation Learning. NeurIPS.
    Razavi, van den Oord & Vinyals (2019). Generating Diverse High-Fidelity Images with VQ-VAE-2. NeurIPS.
"""

import keras
import tensorflow as tf

CONDITION_CONVOLUTIONS = 2


@keras.saving.register_keras_serializable(package="keras_vae")
class GatedActivation(keras.layers.Layer):
    """tanh(a) ⊙ σ(b) of the two halves [a, b] of the last axis (eq. 2 of van den Oord et al. 2016).

    Call arguments:
        inputs: [..., 2F].

    Returns:
        [..., F].
    """

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] % 2:
            raise ValueError(f"GatedActivation needs an even number of channels. Received: {input_shape[-1]}.")

    def call(self, inputs):
        a, b = keras.ops.split(inputs, 2, axis=-1)
        return keras.ops.tanh(a) * keras.ops.sigmoid(b)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] // 2)


def shift(x, rows=0, columns=0, name=None):
    """x moved `rows` down and `columns` right, zeros coming in: out[i, j] = x[i - rows, j - columns]."""
    x = keras.layers.ZeroPadding2D(((rows, 0), (columns, 0)))(x)
    return keras.layers.Cropping2D(((0, rows), (0, columns)), name=name)(x)


def down_conv(x, filters, kernel_size):
    """A convolution whose out[i, j] reads x at rows i-kh+1..i and columns j-kw//2..j+kw//2 (kw odd)."""
    kh, kw = kernel_size
    x = keras.layers.ZeroPadding2D(((kh - 1, 0), (kw // 2, kw // 2)))(x)
    return keras.layers.Conv2D(filters, kernel_size)(x)


def down_right_conv(x, filters, kernel_size):
    """A convolution whose out[i, j] reads x at rows i-kh+1..i and columns j-kw+1..j."""
    kh, kw = kernel_size
    x = keras.layers.ZeroPadding2D(((kh - 1, 0), (kw - 1, 0)))(x)
    return keras.layers.Conv2D(filters, kernel_size)(x)


def initial_streams(x, filters, kernel_size):
    """(v, h) [B, h, w, F] of the embedded codes x [B, h, w, F]: v[i, j] reads rows i-2..i-1,
    h[i, j] row i-1 and row i at column j-1."""
    v = shift(down_conv(x, filters, (2, kernel_size)), rows=1, name="vertical_0")
    above = shift(down_conv(x, filters, (1, kernel_size)), rows=1)
    left = shift(down_right_conv(x, filters, (2, 1)), columns=1)
    return v, keras.layers.Add(name="horizontal_0")([above, left])


def gated_layer(v, h, condition, filters, kernel_size, index):
    """One gated residual layer of both streams (see the module docstring); `condition` may be None."""
    vertical = down_conv(v, 2 * filters, (2, kernel_size))  # (B, h, w, 2F)
    horizontal = down_right_conv(h, 2 * filters, (2, kernel_size // 2 + 1))
    horizontal = keras.layers.Add()([horizontal, keras.layers.Conv2D(2 * filters, 1)(vertical)])
    if condition is not None:
        vertical = keras.layers.Add()([vertical, keras.layers.Conv2D(2 * filters, 1)(condition)])
        horizontal = keras.layers.Add()([horizontal, keras.layers.Conv2D(2 * filters, 1)(condition)])
    v = keras.layers.Add(name=f"vertical_{index}")([v, GatedActivation()(vertical)])
    gated = keras.layers.Conv2D(filters, 1)(GatedActivation()(horizontal))
    return v, keras.layers.Add(name=f"horizontal_{index}")([h, gated])


def condition_features(condition, condition_codes, filters, factor):
    """Features [B, f·hc, f·wc, F] of condition codes [B, hc, wc]: embedded, upsampled f×, two 3×3 convs."""
    s = keras.layers.Embedding(condition_codes, filters, name="condition_embedding")(condition)  # (B, hc, wc, F)
    s = keras.layers.UpSampling2D(factor, interpolation="nearest")(s)  # (B, h, w, F)
    for _ in range(CONDITION_CONVOLUTIONS):
        s = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(s)
    return s


def upsampling_factor(grid_shape, condition_grid):
    """The integer f ≥ 1 with grid_shape = f · condition_grid, or a ValueError."""
    (height, width), (condition_height, condition_width) = grid_shape, condition_grid
    factor = height // condition_height
    if factor < 1 or (height, width) != (factor * condition_height, factor * condition_width):
        raise ValueError(f"The code grid must be the condition grid times one integer f ≥ 1 in both directions. "
                         f"Received: grid_shape={tuple(grid_shape)}, condition_grid={tuple(condition_grid)}.")
    return factor


def check_arguments(grid_shape, num_codes, filters, num_layers, condition_grid, condition_codes, kernel_size):
    """ValueError for a bad argument of `build_pixelcnn`, repeating the bad value."""
    for name, shape in (("grid_shape", grid_shape), ("condition_grid", condition_grid)):
        if shape is not None and (len(shape) != 2 or min(shape) < 1):
            raise ValueError(f"{name} must be two positive sizes (h, w). Received: {name}={shape!r}.")
    for name, value in (("num_codes", num_codes), ("filters", filters), ("num_layers", num_layers)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1. Received: {name}={value!r}.")
    if kernel_size < 3 or kernel_size % 2 == 0:
        # A 1-wide kernel never widens the streams: the left of each row would stay unseen.
        raise ValueError(f"kernel_size must be odd and at least 3. Received: kernel_size={kernel_size!r}.")
    if (condition_grid is None) != (condition_codes is None):
        raise ValueError(f"A condition needs both condition_grid and condition_codes. "
                         f"Received: condition_grid={condition_grid!r}, condition_codes={condition_codes!r}.")
    if condition_codes is not None and condition_codes < 1:
        raise ValueError(f"condition_codes must be at least 1. Received: condition_codes={condition_codes!r}.")


def covering_depth(grid_shape):
    """The fewest gated layers (kernel 3) after which the last position reads every earlier one of an [h, w]
    grid: the vertical stream climbs a row per layer and widens a column each side per layer."""
    height, width = grid_shape
    return max(1, height - 3, width - 2)


def build_pixelcnn(grid_shape, num_codes, filters=64, num_layers=4, name="pixelcnn",
                   condition_grid=None, condition_codes=None, kernel_size=3, condition_channels=None,
                   input_codes=None, input_channels=None):
    """The prior network: logits of p(c_i | c_<i [, condition]) for every position of a code map.

    Args:
        grid_shape: (h, w) of the code maps.
        num_codes: K, the number of codes.
        filters: F, the channels of each stream.
        num_layers: gated residual layers.
        name: the model's name.
        condition_grid: (hc, wc) of the condition code maps, with (h, w) = f·(hc, wc); None for an
            unconditional prior.
        condition_codes: the number of condition codes (with `condition_grid`).
        kernel_size: k, the width of the vertical stream's kernels (odd, ≥ 3).
        condition_channels: Fc, for a condition that is a float feature map [B, h, w, Fc] at the grid's
            own resolution (e.g. what a VAE's decoder makes of z) instead of codes; not with `condition_grid`.
        input_codes: the number of distinct inputs the embedding reads (default K): K + 1 lets an input
            position carry a "withheld" token that no output predicts (see `PixelCNNLikelihood`).
        input_channels: C, for maps of float vectors [B, h, w, C] in place of indices (a 1×1 convolution
            embeds them; not with `input_codes`): the network's K outputs are then whatever parameters of
            p(x_i | x_<i) the caller reads from them (`keras_vae.spatial_prior`).

    Returns:
        A functional `keras.Model` from int32 indices [B, h, w] (float maps [B, h, w, C] with
        `input_channels`) (and, with a condition, the condition
        [B, hc, wc] int32 or [B, h, w, Fc] float, passed as a list [indices, condition]) to float32
        logits [B, h, w, K].
        Its layers `vertical_ℓ` (ℓ < num_layers; the last layer's is read by nothing) and `horizontal_ℓ`
        (ℓ ≤ num_layers) output the two streams.

    Example:
        >>> network = build_pixelcnn((8, 8), 512, condition_grid=(4, 4), condition_codes=512)
        >>> logits = network([bottom_codes, top_codes])  # (B, 8, 8, 512)
    """
    check_arguments(grid_shape, num_codes, filters, num_layers, condition_grid, condition_codes, kernel_size)
    if condition_channels is not None and (condition_grid is not None or condition_channels < 1):
        raise ValueError(f"condition_channels must be at least 1 and excludes condition_grid. Received: "
                         f"condition_channels={condition_channels!r}, condition_grid={condition_grid!r}.")
    if input_codes is not None and input_codes < num_codes:
        raise ValueError(f"input_codes must be at least num_codes={num_codes}. Received: input_codes={input_codes!r}.")
    if input_channels is not None and (input_codes is not None or input_channels < 1):
        raise ValueError(f"input_channels must be at least 1 and excludes input_codes. Received: "
                         f"input_channels={input_channels!r}, input_codes={input_codes!r}.")
    if input_channels is None:
        indices = keras.Input(tuple(grid_shape), dtype="int32", name="indices")
    else:
        indices = keras.Input((*grid_shape, input_channels), name="codes")
    inputs, condition = indices, None
    if condition_grid is not None:
        factor = upsampling_factor(grid_shape, condition_grid)
        inputs = [indices, keras.Input(tuple(condition_grid), dtype="int32", name="condition")]
        condition = condition_features(inputs[1], condition_codes, filters, factor)
    elif condition_channels is not None:
        inputs = [indices, keras.Input((*grid_shape, condition_channels), name="condition")]
        condition = inputs[1]  # each gated layer reads it through its own 1×1 convolutions
    if input_channels is None:
        x = keras.layers.Embedding(input_codes or num_codes, filters, name="embedding")(indices)  # (B, h, w, F)
    else:
        x = keras.layers.Conv2D(filters, 1, name="embedding")(indices)
    v, h = initial_streams(x, filters, kernel_size)
    for index in range(1, num_layers + 1):
        v, h = gated_layer(v, h, condition, filters, kernel_size, index)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(filters, 1, activation="relu")(h)
    logits = keras.layers.Conv2D(num_codes, 1, dtype="float32", name="logits")(h)  # (B, h, w, K)
    return keras.Model(inputs, logits, name=name)


def streams(network):
    """A model from the network's inputs to a dict of its streams, `vertical_ℓ` and `horizontal_ℓ` [B, h, w, F]."""
    names = [layer.name for layer in network.layers if layer.name.startswith(("vertical_", "horizontal_"))]
    return keras.Model(network.input, {name: network.get_layer(name).output for name in names})


def network_inputs(indices, condition=None):
    """What the network takes: the indices alone, or [indices, condition] (both tensors: Keras refuses a mix)."""
    return indices if condition is None else [tf.convert_to_tensor(indices), tf.convert_to_tensor(condition)]


def code_log_prob(network, indices, condition=None):
    """log p(c [| condition]) [B] of code maps [B, h, w] by teacher forcing: Σ_i log softmax(logits_i)[c_i]."""
    indices = tf.cast(indices, tf.int32)
    logits = tf.cast(network(network_inputs(indices, condition)), tf.float32)  # (B, h, w, K)
    log_probs = -tf.nn.sparse_softmax_cross_entropy_with_logits(labels=indices, logits=logits)  # (B, h, w)
    return tf.reduce_sum(log_probs, axis=[1, 2])


def sample_codes(network, num_samples, grid_shape, seed, temperature=1.0, condition=None):
    """Code maps drawn position by position in raster order, c_i ~ softmax(logits_i / temperature).

    One `tf.while_loop` over the h·w positions, so a traced graph holds one copy of the network.

    Args:
        network: from `build_pixelcnn`.
        num_samples: N, an int or a scalar int32 tensor.
        grid_shape: (h, w).
        seed: int32 [2]; the draw at position i uses stateless_fold_in(seed, i).
        temperature: divides the logits (< 1 sharpens, > 1 flattens).
        condition: int32 condition codes [N, hc, wc] for a conditional network.

    Returns:
        int32 [N, h, w].
    """
    height, width = grid_shape
    positions = height * width
    temperature = tf.cast(temperature, tf.float32)

    def draw(position, codes):  # codes (N, h·w), zero from `position` on
        logits = network(network_inputs(tf.reshape(codes, [-1, height, width]), condition))  # (N, h, w, K)
        logits = tf.gather(tf.reshape(logits, [tf.shape(codes)[0], positions, -1]), position, axis=1)  # (N, K)
        drawn = tf.random.stateless_categorical(
            tf.cast(logits, tf.float32) / temperature, 1,
            seed=tf.random.experimental.stateless_fold_in(seed, position), dtype=tf.int32)  # (N, 1)
        return position + 1, tf.where(tf.range(positions) == position, drawn, codes)

    codes = tf.zeros([num_samples, positions], tf.int32)
    _, codes = tf.while_loop(lambda position, _: position < positions, draw, (tf.constant(0), codes),
                             maximum_iterations=positions)
    return tf.reshape(codes, [-1, height, width])
