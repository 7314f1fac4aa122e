"""A noise-contrastive prior: the trained prior of a hierarchy's top groups, reweighted by a classifier.

After training, the prior of an NVAE's top groups (their whitened code ε, prior N(0, I)) can leave holes:
regions it draws from where no posterior puts its mass, decoded as lumps (`scripts/prior_holes.py`). The
prior that maximizes the ELBO for the trained networks is the aggregate posterior q(ε) = E_x q(ε | x)
(Hoffman & Johnson 2016). Aneja et al. (2021) reach towards it with a binary classifier D trained to tell
draws of q(ε) (exact ancestral posterior draws of training images) from draws of the base prior p_b
(N(0, I), or a learned top prior trained with the model): at its optimum the classifier's logit is the log
density ratio, log r(ε) = log q(ε) / p_b(ε), and the reweighted prior

    p(ε) = p_b(ε) · r(ε) / Z,    Z = E_p_b[r(ε)],

is p_b where the classifier cannot tell them apart and q(ε) where it can. It is sampled by
sampling-importance-resampling (SIR): M proposals from p_b (at temperature T), one of them chosen with
probabilities ∝ r, which is exact only as M grows (with few effective proposals the draws lie between the
proposals' law and the reweighted prior); and scored exactly up to Z, which a Monte-Carlo average over p_b's
draws estimates once.

References:
    Aneja, Schwing, Kautz & Vahdat (2021). A Contrastive Learning Approach for Training Variational
        Autoencoder Priors (NCP-VAE). NeurIPS.
    Gutmann & Hyvärinen (2010). Noise-contrastive estimation. AISTATS: the classifier's logit as a density ratio.
    Rubin (1988). Using the SIR algorithm to simulate posterior distributions.
    Hoffman & Johnson (2016). ELBO surgery: the prior that maximizes the ELBO is the aggregate posterior.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_vae.early_stopping import train_keeping_best
from keras_vae.errors import UserError

PROPOSALS = 1000  # SIR proposals per sample
PROPOSAL_CHUNK = 16  # samples whose proposals are scored at once (16 × 1000 codes)
WIDTH, DEPTH = 64, 3  # the classifier's channels and 3×3 convolutions
NORMALIZER_DRAWS = 200_000  # base-prior draws in the estimate of log Z (and of SIR's effective sample size)
SCORING_BATCH = 10_000  # codes the classifier reads at a time outside SIR
PATIENCE = 5  # epochs without a better held-out loss after which the classifier's training stops


# ------------------------------------------------------------------ pure functions
def contrastive_loss(positive_logits, negative_logits):
    """The classifier's logistic loss, nats: E_q[softplus(−D)] + E_N(0,I)[softplus(D)]; its minimum over D is
    2 log 2 − 2 JS(q ‖ N(0, I)), at D = log q / N(0, I)."""
    return tf.reduce_mean(tf.nn.softplus(-positive_logits)) + tf.reduce_mean(tf.nn.softplus(negative_logits))


def log_normalizer(log_ratios):
    """log Z = log E_p[r] estimated from the log-ratios [N] of N draws from the base prior (log-mean-exp)."""
    log_ratios = tf.cast(log_ratios, tf.float64)
    return tf.reduce_logsumexp(log_ratios) - tf.math.log(tf.cast(tf.size(log_ratios), tf.float64))


def resample(log_ratios, seed):
    """SIR's choice: per row of `log_ratios` [N, M], the index [N] of one proposal drawn with probability
    ∝ r (stateless in `seed`, [2] integers)."""
    return tf.random.stateless_categorical(log_ratios, 1, seed, dtype=tf.int32)[:, 0]


def effective_sample_size(log_ratios):
    """(Σ w)² / Σ w² per row of `log_ratios` [N, M]: how many of the M proposals the choice draws on."""
    weights = tf.nn.softmax(tf.cast(log_ratios, tf.float64), axis=-1)
    return 1.0 / tf.reduce_sum(weights**2, -1)


# ------------------------------------------------------------------ the classifier
@keras.saving.register_keras_serializable(package="keras_vae")
class RatioNetwork(keras.layers.Layer):
    """The classifier's logit, log r(ε), for whitened top codes ε [B, T]: each group's map (in the code's
    layout, top group first) upsampled to the finest of them, the maps concatenated, `depth` 3×3 Swish
    convolutions, a Swish dense layer and a linear one.

    Args:
        group_shapes: the groups' (h, w, c), top group first; T = Σ h·w·c.
        width: channels of the convolutions and units of the dense layer.
        depth: convolutions.
        seed: seeds the initial weights (None: Keras's global generator).

    Call arguments:
        code: [B, T] float32.

    Returns:
        [B] float32 log-ratios.
    """

    def __init__(self, group_shapes, width=WIDTH, depth=DEPTH, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.group_shapes = [tuple(int(d) for d in shape) for shape in group_shapes]
        if not self.group_shapes:
            raise ValueError("RatioNetwork needs at least one group. Received: group_shapes=[].")
        self.width, self.depth, self.seed = width, depth, seed
        self.side = max(h for h, _, _ in self.group_shapes)
        initializer = (lambda i: keras.initializers.GlorotUniform(None if seed is None else seed + i))
        self.convs = [keras.layers.Conv2D(width, 3, padding="same", activation="swish", kernel_initializer=initializer(i))
                      for i in range(depth)]
        self.hidden = keras.layers.Dense(width, activation="swish", kernel_initializer=initializer(depth))
        self.out = keras.layers.Dense(1, kernel_initializer=initializer(depth + 1))

    def maps(self, code):
        """[B, T] -> [B, side, side, Σ c]: the groups' maps at the finest of their resolutions."""
        parts, start = [], 0
        for h, w, c in self.group_shapes:
            part = tf.reshape(code[:, start: start + h * w * c], [-1, h, w, c])
            factor = self.side // h
            parts.append(tf.repeat(tf.repeat(part, factor, axis=1), factor, axis=2))
            start += h * w * c
        return tf.concat(parts, -1)

    def call(self, code):
        h = self.maps(tf.cast(code, self.compute_dtype))
        for conv in self.convs:
            h = conv(h)
        h = tf.reshape(h, [tf.shape(h)[0], math.prod(h.shape[1:])])  # (B, side, side, width) -> (B, ·)
        return tf.cast(self.out(self.hidden(h))[:, 0], tf.float32)

    def get_config(self):
        return dict(super().get_config(), group_shapes=[list(s) for s in self.group_shapes], width=self.width,
                    depth=self.depth, seed=self.seed)


def sir_draws(network, num_samples, dim, seed, temperature=1.0, proposals=PROPOSALS, chunk=PROPOSAL_CHUNK,
              propose=None):
    """[num_samples, dim] draws from p_base·r / Z by SIR over `proposals` proposals each, stateless in
    `seed` ([2] int64). The base is N(0, T² I), or `propose`'s: (count, seed [2] int64) -> [count, dim]
    stateless draws of a learned base prior (at the temperature). The proposals of `chunk` samples are scored
    at a time, one chunk after the other, so memory does not grow with `num_samples`."""
    if propose is None:
        propose = (lambda count, proposal_seed:
                   temperature * tf.random.stateless_normal([count, dim], seed=proposal_seed))
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    count = tf.cast(num_samples, tf.int32)
    padded = (count + chunk - 1) // chunk * chunk

    def one_chunk(start):
        chunk_seed = tf.random.experimental.stateless_fold_in(seeds[0], tf.cast(start, tf.int64))
        proposal = tf.reshape(propose(chunk * proposals, chunk_seed), [chunk * proposals, dim])
        log_ratios = tf.reshape(network(proposal), [chunk, proposals])  # (chunk·M,) -> (chunk, M)
        choice_seed = tf.random.experimental.stateless_fold_in(seeds[1], tf.cast(start, tf.int64))
        index = resample(log_ratios, choice_seed)
        return tf.gather(tf.reshape(proposal, [chunk, proposals, dim]), index, batch_dims=1)  # (chunk, dim)

    draws = tf.map_fn(one_chunk, tf.range(0, padded, chunk), fn_output_signature=tf.TensorSpec([chunk, dim]),
                      parallel_iterations=1)
    return tf.reshape(draws, [-1, dim])[:count]


# ------------------------------------------------------------------ fitting
def log_ratios_of(network, codes, batch_size=SCORING_BATCH):
    """The classifier's log-ratios [N] of `codes` [N, T] (a NumPy array), `batch_size` at a time."""
    return np.concatenate([network(codes[s: s + batch_size]).numpy() for s in range(0, len(codes), batch_size)])


def normal_draws(count, dim, rng):
    """`count` N(0, I) codes [count, dim] float32 from the NumPy generator `rng`: the base prior's draws
    when the base is N(0, I)."""
    return rng.standard_normal((count, dim)).astype(np.float32)


def noise_log_ratios(network, num, dim, rng, batch_size=SCORING_BATCH, draw=normal_draws):
    """The log-ratios [num] of `num` codes of `dim` dimensions from the base prior (`draw`: (count, dim, rng)
    -> [count, dim], N(0, I) by default) drawn from `rng`, made and read `batch_size` at a time."""
    return np.concatenate([log_ratios_of(network, draw(min(batch_size, num - s), dim, rng))
                           for s in range(0, num, batch_size)])


def fit_ratio(network, positives, held_out, epochs, batch_size, learning_rate, seed, log=None, draw=normal_draws):
    """Trains `network` to tell `positives` [N, T] (draws of the aggregate posterior) from fresh draws of
    the base prior (`draw`: (count, T, rng) -> [count, T]; N(0, I) by default), one of each per pair in a
    batch (Adam), and keeps the weights of the epoch whose `contrastive_loss` on `held_out` [M, T] codes
    against as many fixed base draws is least; stops after `epochs`, or once PATIENCE epochs in a row have
    not lowered that loss (the classifier overfits).

    Returns:
        {"loss": the training loss per epoch, "val_loss": the held-out loss per epoch, "best_epoch": the
        epoch kept (1-based)}.
    """
    rng = np.random.default_rng(seed)
    dim = positives.shape[1]
    held_out_noise = draw(len(held_out), dim, rng)
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def train_step(positive, negative):
        with tf.GradientTape() as tape:
            loss = contrastive_loss(network(positive), network(negative))
        gradients = tape.gradient(loss, network.trainable_variables)
        optimizer.apply_gradients(zip(gradients, network.trainable_variables))
        return loss

    def held_out_loss():
        return float(contrastive_loss(log_ratios_of(network, held_out), log_ratios_of(network, held_out_noise)))

    steps = max(1, len(positives) // batch_size)

    def run_epoch():
        order = rng.permutation(len(positives))
        total = 0.0
        for s in range(steps):
            rows = order[s * batch_size: (s + 1) * batch_size]
            noise = draw(len(rows), dim, rng)
            total += float(train_step(tf.constant(positives[rows], tf.float32), tf.constant(noise)))
        return total / steps

    history = train_keeping_best(run_epoch, held_out_loss, network.weights, epochs, PATIENCE, log)
    if not history["best_epoch"]:
        raise UserError(f"The contrastive prior's classifier diverged: its held-out loss was never finite "
                        f"({history['val_loss'][:3]} ...). Try a lower --learning-rate. Received: "
                        f"learning_rate={learning_rate}.")
    return history


def log_normalizer_and_sample_size(log_ratios, proposals=PROPOSALS):
    """(log Z, SIR's effective sample size) from the log-ratios [N] of N ≥ `proposals` draws of the base prior:
    log Z = log E_base[r(ε)] over all of them, and the mean `effective_sample_size` of their rows of
    `proposals` (SIR's proposals are such draws; a last partial row is left out)."""
    log_ratios = np.asarray(log_ratios)
    rows = len(log_ratios) // proposals
    if rows < 1:
        raise ValueError(f"Need at least {proposals} log-ratios (one row of proposals). Received: {len(log_ratios)}.")
    ess = effective_sample_size(log_ratios[:rows * proposals].reshape(rows, proposals))
    return float(log_normalizer(log_ratios)), float(np.mean(ess))
