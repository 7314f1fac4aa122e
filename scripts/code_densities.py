"""Two learned densities of a set of codes, for `prior_holes.py`: an autoregressive one and a diffusion model.

    made        MADE (Germain et al. 2015): p(x) = Π_d p(x_d | x_<d), each conditional a mixture of
                MIXTURE_COMPONENTS Gaussians whose weights, means and spreads one masked MLP reads off x_<d.
                Trained by maximum likelihood, the epoch kept chosen on held-out codes; its log-density is exact.
    diffusion   a denoising diffusion model (DDPM, Ho et al. 2020; cosine noise schedule, Nichol & Dhariwal
                2021): an MLP ε_θ(x_t, t) learns the noise in x_t = √ᾱ_t x + √(1 − ᾱ_t) ε, and samples are
                drawn by the ancestral sampler from x_T ~ N(0, I). Over a VAE's latent code this is the
                prior LSGM trains (Vahdat et al. 2021), here fitted after training. Draws only: its
                log-density would need the probability-flow ODE.

Both are fitted in float32, numpy in and out, their initial weights seeded.
"""

import numpy as np

from keras_vae.early_stopping import train_keeping_best

MIXTURE_COMPONENTS = 10
MADE_HIDDEN = 1024
MADE_LAYERS = 2
MADE_PATIENCE = 5  # epochs without a better held-out log-density before fitting stops
DIFFUSION_STEPS = 1000  # T, the noise levels of training and of the sampler
DIFFUSION_WIDTH = 512
DIFFUSION_BLOCKS = 4
DIFFUSION_TRAIN_STEPS = 20000
STEPS_PER_CALL = 100  # optimizer steps inside one traced call
BATCH = 512


# ---------------------------------------------------------------- MADE
def made_masks(dim, hidden, layers):
    """The connectivity masks of a MADE over `dim` inputs: `layers` hidden masks ([dim, hidden], then
    [hidden, hidden]) and the output mask [hidden, dim]. Hidden unit k has degree 1 + k mod (dim − 1) and reads
    units of lower or equal degree; output d (degree d + 1) reads hidden units of degree ≤ d, so it sees only
    inputs before d."""
    input_degrees = np.arange(1, dim + 1)
    hidden_degrees = 1 + np.arange(hidden) % max(1, dim - 1)
    masks, below = [], input_degrees
    for _ in range(layers):
        masks.append((hidden_degrees[None, :] >= below[:, None]).astype(np.float32))
        below = hidden_degrees
    return masks, (input_degrees[None, :] > below[:, None]).astype(np.float32)


def mixture_log_prob(x, logits, loc, scale):
    """Σ_d log Σ_k softmax(logits)_dk N(x_d; loc_dk, scale_dk²) [N] for x [N, D] and parameters [N, D, K]: each
    conditional a `tfd.MixtureSameFamily` of Normals."""
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    conditionals = tfd.MixtureSameFamily(tfd.Categorical(logits=logits), tfd.Normal(loc, scale))
    return tfd.Independent(conditionals, 1).log_prob(x)


def build_made(dim, hidden=MADE_HIDDEN, layers=MADE_LAYERS, components=MIXTURE_COMPONENTS, seed=0):
    """A MADE: `(params, variables)` where params(x [N, D]) gives (logits, loc, scale) [N, D, K] of each
    conditional p(x_d | x_<d)."""
    import keras
    import tensorflow as tf

    masks, output_mask = made_masks(dim, hidden, layers)
    initializers = [keras.initializers.GlorotUniform(seed + i) for i in range(layers + 1)]  # one stream each
    sizes = [dim] + [hidden] * layers
    kernels = [tf.Variable(initializers[i]((sizes[i], sizes[i + 1]))) for i in range(layers)]
    biases = [tf.Variable(tf.zeros(hidden)) for _ in range(layers)]
    output_mask = np.repeat(output_mask, 3 * components, axis=1)  # the output's columns are (d, parameter, k)
    output_kernel = tf.Variable(initializers[layers]((hidden, dim * 3 * components)))
    output_bias = tf.Variable(tf.zeros(dim * 3 * components))

    def params(x):
        h = x
        for kernel, bias, mask in zip(kernels, biases, masks):
            h = tf.nn.gelu(h @ (kernel * mask) + bias)
        out = tf.reshape(h @ (output_kernel * output_mask) + output_bias, [-1, dim, 3, components])
        return out[:, :, 0], out[:, :, 1], tf.nn.softplus(out[:, :, 2]) + 1e-3

    return params, [*kernels, *biases, output_kernel, output_bias]


def fit_made(points, held_out, seed=0, epochs=40, batch_size=BATCH, learning_rate=1e-3, patience=MADE_PATIENCE,
             hidden=MADE_HIDDEN):
    """A MADE (`hidden` units per layer) fitted to `points` [N, D] by Adam, keeping the epoch with the best mean
    log-density of `held_out` [M, D]. Returns (params, history of held-out mean log-densities)."""
    import keras
    import tensorflow as tf

    params, variables = build_made(points.shape[1], hidden, seed=seed)
    optimizer = keras.optimizers.Adam(learning_rate)
    data = tf.constant(points, tf.float32)
    held_out = tf.constant(held_out, tf.float32)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(mixture_log_prob(batch, *params(batch)))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    rng = np.random.default_rng(seed)

    def run_epoch():
        order = rng.permutation(len(points))
        for start in range(0, len(order), batch_size):
            step(tf.gather(data, order[start: start + batch_size]))

    def held_out_loss():
        return -float(tf.reduce_mean(mixture_log_prob(held_out, *params(held_out))))

    history = train_keeping_best(run_epoch, held_out_loss, variables, epochs, patience)
    return params, [-loss for loss in history["val_loss"]]


def made_log_density(params, points):
    """The MADE's log p(x) [N] of points [N, D]."""
    import tensorflow as tf

    points = tf.constant(points, tf.float32)
    return mixture_log_prob(points, *params(points)).numpy()


def made_draws(params, num, dim, seed):
    """`num` draws [num, D] from the MADE, one dimension at a time."""
    import tensorflow as tf

    x = np.zeros((num, dim), np.float32)
    for d in range(dim):
        logits, loc, scale = (p[:, d].numpy() for p in params(tf.constant(x)))
        component = tf.random.stateless_categorical(logits, 1, seed=[seed, 2 * d]).numpy()[:, 0]
        noise = tf.random.stateless_normal([num], seed=[seed, 2 * d + 1]).numpy()
        rows = np.arange(num)
        x[:, d] = loc[rows, component] + scale[rows, component] * noise
    return x


# ------------------------------------------------------------ diffusion
def cosine_schedule(steps=DIFFUSION_STEPS, offset=0.008):
    """(β_t, ᾱ_t) [T] of the cosine schedule: ᾱ(s) = cos²((s + o)/(1 + o)·π/2) / cos²(o/(1 + o)·π/2) at
    s = t/T, β_t = 1 − ᾱ_t/ᾱ_{t−1} clipped at 0.999, ᾱ_t = Π_{s≤t} (1 − β_s)."""
    s = np.arange(steps + 1) / steps
    f = np.cos((s + offset) / (1 + offset) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    return betas, np.cumprod(1 - betas)


def build_denoiser(dim, width=DIFFUSION_WIDTH, blocks=DIFFUSION_BLOCKS, seed=0):
    """ε_θ(x_t [N, D], t [N] int) → [N, D]: residual MLP blocks (LayerNorm, Dense, SiLU with the step's
    sinusoidal embedding added, Dense), the output layer zero-initialized, the others seeded by `seed`."""
    import itertools

    import keras
    import tensorflow as tf

    seeds = itertools.count(seed)  # one initializer seed per Dense layer

    def dense(units):
        return keras.layers.Dense(units, kernel_initializer=keras.initializers.GlorotUniform(next(seeds)))

    embedding_size = 64
    inputs, steps = keras.Input((dim,)), keras.Input((), dtype="int32")
    frequencies = np.exp(-np.log(10000.0) * np.arange(embedding_size) / embedding_size).astype(np.float32)
    angles = keras.layers.Lambda(lambda t: tf.cast(t, tf.float32)[:, None] * frequencies)(steps)
    embedding = keras.layers.Concatenate()([keras.ops.sin(angles), keras.ops.cos(angles)])
    h = dense(width)(inputs)
    for _ in range(blocks):
        y = dense(width)(keras.layers.LayerNormalization()(h))
        y = keras.layers.Activation("silu")(keras.layers.Add()([y, dense(width)(embedding)]))
        h = keras.layers.Add()([h, dense(width)(y)])
    out = keras.layers.Dense(dim, kernel_initializer="zeros")(keras.layers.Activation("silu")(h))
    return keras.Model([inputs, steps], out)


def fit_diffusion(points, seed=0, train_steps=DIFFUSION_TRAIN_STEPS, batch_size=BATCH, learning_rate=1e-3,
                  schedule=None, log=None, width=DIFFUSION_WIDTH):
    """A denoiser (`build_denoiser`, `width` wide) trained on `points` [N, D] with the noise-prediction loss
    E‖ε_θ(x_t, t) − ε‖², t uniform, for `train_steps` Adam steps (a positive multiple of STEPS_PER_CALL) with a
    cosine-decayed learning rate. Returns (denoiser, the last batch's loss)."""
    import keras
    import tensorflow as tf

    if train_steps < STEPS_PER_CALL or train_steps % STEPS_PER_CALL:
        raise ValueError(f"train_steps must be a positive multiple of {STEPS_PER_CALL}. Received: "
                         f"train_steps={train_steps!r}.")

    betas, alpha_bar = schedule or cosine_schedule()
    steps = len(betas)
    network = build_denoiser(points.shape[1], width, seed=seed)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, train_steps))
    data = tf.constant(points, tf.float32)
    signal, noise_scale = (tf.constant(np.sqrt(a), tf.float32) for a in (alpha_bar, 1 - alpha_bar))

    @tf.function
    def chunk(start):
        loss = tf.constant(0.0)
        for i in tf.range(STEPS_PER_CALL):
            step_seed = tf.stack([start + i, seed])
            rows = tf.random.stateless_uniform([batch_size], step_seed, 0, len(points), tf.int32)
            t = tf.random.stateless_uniform([batch_size], step_seed + [0, 1], 0, steps, tf.int32)
            noise = tf.random.stateless_normal([batch_size, points.shape[1]], step_seed + [0, 2])
            x = tf.gather(data, rows)
            noisy = tf.gather(signal, t)[:, None] * x + tf.gather(noise_scale, t)[:, None] * noise
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((network([noisy, t]) - noise) ** 2)
            optimizer.apply_gradients(zip(tape.gradient(loss, network.trainable_variables),
                                          network.trainable_variables))
        return loss

    optimizer.build(network.trainable_variables)
    for start in range(0, train_steps, STEPS_PER_CALL):
        loss = float(chunk(tf.constant(start)))
        if log and start % (20 * STEPS_PER_CALL) == 0:
            log(f"diffusion step {start}: loss {loss:.4f}")
    return network, loss


def diffusion_draws(denoise, num, dim, seed, schedule=None, clip=None):
    """`num` draws [num, D] by the DDPM ancestral sampler from x_T ~ N(0, I): for t = T−1..0, the clean point
    x̂₀ = (x − √(1 − ᾱ_t) ε(x, t))/√ᾱ_t (clipped to [−clip, clip] unless None: an undertrained ε at the largest t,
    where √ᾱ_t is near 0, would otherwise blow up), then x ← the posterior mean
    (√ᾱ_{t−1} β_t x̂₀ + √(1 − β_t)(1 − ᾱ_{t−1}) x)/(1 − ᾱ_t) plus √β̃_t z, β̃_t = β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t), no noise
    at t = 0. `denoise(x, t)` is the noise predicted for x [num, D] at the integer step t [num]."""
    import tensorflow as tf

    betas, alpha_bar = schedule or cosine_schedule()
    previous = np.concatenate([[1.0], alpha_bar[:-1]])
    betas_t, alpha_bar_t, previous_t = (tf.constant(a, tf.float32) for a in (betas, alpha_bar, previous))

    @tf.function
    def step(x, t):
        beta, a, a_previous = betas_t[t], alpha_bar_t[t], previous_t[t]
        clean = (x - tf.sqrt(1 - a) * denoise(x, tf.fill([num], t))) / tf.sqrt(a)
        if clip is not None:
            clean = tf.clip_by_value(clean, -clip, clip)
        mean = (tf.sqrt(a_previous) * beta * clean + tf.sqrt(1 - beta) * (1 - a_previous) * x) / (1 - a)
        noise = tf.random.stateless_normal([num, dim], tf.stack([seed, t + 1]))
        return mean + tf.sqrt(beta * (1 - a_previous) / (1 - a)) * noise

    x = tf.random.stateless_normal([num, dim], [seed, 0])
    for t in reversed(range(len(betas))):
        x = step(x, tf.constant(t))
    return x.numpy()
