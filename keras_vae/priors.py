"""Priors p(z) beyond N(0, I): a learned mixture of Gaussians, the VampPrior, and an exemplar prior.

None has a closed-form KL against a Gaussian posterior, so the KL code
takes its Monte-Carlo path (log q(z|x) − log p(z) at the reparameterized z).

References:
    Tomczak & Welling (2018). VAE with a VampPrior. AISTATS.
    Dilokthanakul et al. (2016). Deep Unsupervised Clustering with Gaussian
        Mixture Variational Autoencoders.
    Ghosh et al. (2020). From Variational to Deterministic Autoencoders. ICLR:
        a mixture fitted to the codes after training (ex-post density estimation).
    Hoffman & Johnson (2016). ELBO surgery: the prior that maximizes the ELBO is the aggregate posterior.
    Norouzi et al. (2020). Exemplar VAE. NeurIPS: a prior made of training examples' posteriors.
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.distribute import gather_over_replicas
from keras_vae.errors import UserError
from keras_vae.metrics import mixture_log_density, mixture_log_joint

tfd = tfp.distributions
PRIORS = ("normal", "mog", "vamp")
SCALE_FLOOR = 1e-4  # added to every learned mixture scale
# Bandwidths tried by `aggregate_posterior_mixture`, as fractions of each code dimension's spread.
BANDWIDTH_FACTORS = (0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0)


class DiagonalGaussianMixture(tfd.MixtureSameFamily):
    """A `tfd.MixtureSameFamily` of diagonal Gaussians whose log-density is taken by `mixture_log_joint`'s
    matrix products, so that scoring codes [..., L] against K components holds [..., K] numbers, not tfd's
    [..., K, L]. Made by `gaussian_mixture`; everything but `log_prob` is tfd's."""

    def _log_prob(self, x):
        normal = self.components_distribution.distribution
        flat = tf.reshape(x, [-1, tf.shape(x)[-1]])
        log_p = mixture_log_density(flat, self.mixture_distribution.logits, normal.loc, normal.scale)
        return tf.cast(tf.reshape(log_p, tf.shape(x)[:-1]), x.dtype)


def gaussian_mixture(logits, loc, scale):
    """Σ_k π_k N(loc_k, diag(scale_k²)) with K components over L dimensions ([K], [K, L], [K, L] or [L] shared)."""
    return DiagonalGaussianMixture(
        tfd.Categorical(logits=logits), tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)
    )


def add_prior_weights(model, name, components):
    """Creates the prior's trainable weights on `model`; returns nothing for the standard prior."""
    if name not in PRIORS:
        raise UserError(f"--prior must be one of {', '.join(PRIORS)}. Received: prior={name!r}.")
    if name != "normal" and (not isinstance(components, int) or components <= 0):
        raise UserError(f"--prior-components must be a positive integer. Received: {components!r}.")
    if name == "mog":
        add_mixture_weights(model, components, model.latent_dim)
    elif name == "vamp":
        model.pseudo_inputs = model.add_weight(
            shape=(components,) + tuple(model.image_shape),
            initializer=keras.initializers.RandomUniform(0.0, 1.0), name="pseudo_inputs")


def add_mixture_weights(model, components, dim, loc_stddev=1.0):
    """Creates a `mog` prior's weights on `model`: `components` diagonal Gaussians over `dim` dimensions, equal
    weights, unit scales and means drawn from N(0, loc_stddev²)."""
    model.prior_logits = model.add_weight(shape=(components,), initializer="zeros", name="prior_logits")
    model.prior_loc = model.add_weight(
        shape=(components, dim), initializer=keras.initializers.RandomNormal(stddev=loc_stddev), name="prior_loc")
    model.prior_raw_scale = model.add_weight(
        shape=(components, dim), initializer=keras.initializers.Constant(0.5413),  # softplus⁻¹(1)
        name="prior_raw_scale")


def mixture_parameters(model):
    """(logits [K], loc [K, L], scale [K, L]) of the `mog` prior whose weights `add_mixture_weights` created."""
    return model.prior_logits, model.prior_loc, tf.nn.softplus(model.prior_raw_scale) + SCALE_FLOOR


def add_exemplar_memory(model, size, dim):
    """Creates an exemplar prior's state on `model`: `size` stored codes over `dim` dimensions (`prior_loc`, zeros,
    so that until training stores codes every component is N(0, I)), the slot the next code goes to
    (`exemplar_slot`), and a learned log-bandwidth per dimension (`prior_log_bandwidth`, at a bandwidth of 1). The
    stored codes and the slot are assigned, not trained."""
    model.prior_loc = model.add_weight(shape=(size, dim), initializer="zeros", trainable=False, name="prior_loc",
                                       aggregation="only_first_replica")
    model.exemplar_slot = model.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False,
                                           name="exemplar_slot", aggregation="only_first_replica")
    model.prior_log_bandwidth = model.add_weight(shape=(dim,), name="prior_log_bandwidth",
                                                 initializer=keras.initializers.Constant(np.log1p(-SCALE_FLOOR)))


def exemplar_bandwidth(model):
    """The exemplar prior's bandwidth [L]: exp(`prior_log_bandwidth`) + `SCALE_FLOOR`, floored as a mog's scales."""
    return tf.exp(model.prior_log_bandwidth) + SCALE_FLOOR


def exemplar_parameters(model):
    """(logits [K], loc [K, L], scale [L]) of the exemplar prior of `add_exemplar_memory`: equal weights, the
    stored codes as means, and one bandwidth that every component shares (`mixture_log_joint` takes the [L]
    scale without making a [K, L] one)."""
    return tf.zeros(tf.shape(model.prior_loc)[:1]), model.prior_loc, exemplar_bandwidth(model)


def ring_rows(size, slot, count):
    """The rows of a ring of `size` that `count` new entries take from `slot` on, and the next slot: when
    count > size, only the last `size` entries are kept, so (the entries' offset, the rows, the next slot)."""
    kept = tf.minimum(count, size)
    rows = (slot + tf.range(kept, dtype=slot.dtype)) % size
    return count - kept, rows, (slot + kept) % size


def remember_exemplars(model, codes):
    """Stores `codes` [B, L] in the exemplar prior's memory over the oldest. Under tf.distribute every replica's
    part is gathered first, so that each replica (and each worker) stores the same global batch."""
    codes = tf.cast(gather_over_replicas(codes), model.prior_loc.dtype)
    size = tf.cast(tf.shape(model.prior_loc)[0], tf.int64)
    offset, rows, slot = ring_rows(size, tf.convert_to_tensor(model.exemplar_slot), tf.cast(tf.shape(codes)[0], tf.int64))
    model.prior_loc.value.scatter_update(tf.IndexedSlices(codes[offset:], rows))
    model.exemplar_slot.assign(slot)


def learned_prior(model, name):
    """p(z) for a model whose weights `add_prior_weights` created."""
    if name == "mog":
        return gaussian_mixture(*mixture_parameters(model))
    # VampPrior: p(z) = (1/K) Σ_k q(z | u_k), the posterior at K learned pseudo-inputs u_k.
    loc, scale = model.encode(model.pseudo_inputs)
    components = tf.shape(loc)[0]
    return gaussian_mixture(tf.zeros([components]), loc, scale)


def mixture_draws(logits, loc, scale, num_samples, seed, temperature=1.0):
    """`num_samples` draws [N, L] of Σ_k softmax(logits)_k N(loc_k, diag((T scale_k)²)), stateless in `seed`
    ([2] int): a component from the weights, then its Gaussian with its scale ([K, L], or [L] shared) times the
    temperature T."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    k = tf.random.stateless_categorical(logits[None], num_samples, seed=seeds[0])[0]
    noise = tf.random.stateless_normal([num_samples, tf.shape(loc)[1]], seed=seeds[1])
    scale = scale if scale.shape.rank == 1 else tf.gather(scale, k)
    return tf.gather(loc, k) + temperature * scale * noise


def assign_mixture(model, logits, loc, scale):
    """Sets a `mog` prior's weights so that `learned_prior` is Σ_k softmax(logits)_k N(loc_k, diag(scale_k²))."""
    scale = np.maximum(np.asarray(scale, np.float64) - SCALE_FLOOR, 1e-12)
    model.prior_logits.assign(np.asarray(logits, np.float32))
    model.prior_loc.assign(np.asarray(loc, np.float32))
    model.prior_raw_scale.assign((scale + np.log(-np.expm1(-scale))).astype(np.float32))  # softplus⁻¹


def mixture_log_likelihood(points, logits, loc, scale):
    """log Σ_k π_k N(x; loc_k, diag(scale_k²)) per point [N] and the responsibilities [N, K] (float64 NumPy)."""
    log_joint = mixture_log_joint(points, logits, loc, scale)
    log_likelihood = tf.reduce_logsumexp(log_joint, axis=1)
    return log_likelihood.numpy(), tf.exp(log_joint - log_likelihood[:, None]).numpy()


def mixture_em_step(points, logits, loc, scale, min_scale):
    """One EM iteration of a diagonal Gaussian mixture on `points` [N, L]: the new (logits, loc, scale). A
    component that no point claims keeps its place and gets weight ~0; scales stay ≥ `min_scale`."""
    _, responsibility = mixture_log_likelihood(points, logits, loc, scale)
    loc, scale = np.array(loc, np.float64), np.array(scale, np.float64)
    counts = responsibility.sum(0)  # [K]
    claimed = counts > 1e-8
    weights = responsibility[:, claimed] / counts[claimed]
    loc[claimed] = weights.T @ points
    variance = weights.T @ (points * points) - loc[claimed] ** 2
    scale[claimed] = np.sqrt(np.maximum(variance, min_scale**2))
    return np.log(np.maximum(counts / len(points), 1e-30)), loc, scale


def fit_mixture(points, logits, loc, scale, held_out=None, max_iterations=200, tolerance=1e-5, min_scale=1e-3):
    """Expectation-maximization for a diagonal Gaussian mixture on `points` [N, L], started from
    (logits, loc, scale), stopped at the first iteration that raises the mean log-likelihood of `held_out`
    (of `points` when None) by less than `tolerance` nats per point: that iteration is not taken, so a
    mixture that starts to fit its points' noise (components narrowing onto single codes) stops there.

    Returns:
        (logits [K], loc [K, L], scale [K, L], the judged mean log-likelihood at the start and after each
        iteration taken).
    """
    points = np.asarray(points, np.float64)
    judged = points if held_out is None else np.asarray(held_out, np.float64)
    params = tuple(np.array(a, np.float64) for a in (logits, loc, scale))
    curve = [mean_log_likelihood(judged, *params)]
    for _ in range(max_iterations):
        candidate = mixture_em_step(points, *params, min_scale)
        score = mean_log_likelihood(judged, *candidate)
        if score - curve[-1] < tolerance:
            break
        params = candidate
        curve.append(score)
    return (*params, curve)


def mean_log_likelihood(points, logits, loc, scale, chunk=500):
    """The mean of `mixture_log_likelihood`'s log-likelihood over `points` [N, L], without its
    responsibilities, `chunk` points at a time (so [chunk, K] numbers at once)."""
    return float(tf.reduce_mean(mixture_log_density(np.asarray(points, np.float64), logits, loc, scale, rows=chunk)))


def aggregate_posterior_mixture(loc, scale, held_out, factors=BANDWIDTH_FACTORS):
    """The aggregate posterior q(z) = (1/N) Σ_n q(z | x_n) of N examples, as a mixture with one component per
    example, each widened by a kernel bandwidth:

        p(z) = (1/N) Σ_n N(z; loc_n, diag(scale_n² + h²)),   h_d = factor · std_n(loc_nd).

    The aggregate posterior is the prior that maximizes the ELBO's E_q[log p(z)] over the training set (ELBO
    surgery), and its samples land where the decoder was trained; but each q(z | x_n) is narrow, so without
    the bandwidth the codes of unseen images fall between its components. The factor is the one of `factors`
    under which `held_out` codes (draws from the posteriors of other examples) are most likely, as in a
    kernel density estimate's bandwidth chosen by held-out likelihood; each dimension's bandwidth follows its
    codes' spread.

    Args:
        loc, scale: [N, L] the examples' posterior means and standard deviations.
        held_out: [M, L] codes drawn from the posteriors of examples not among the N.
        factors: the bandwidths tried, as fractions of each dimension's spread.

    Returns:
        (logits [N], loc [N, L], scale [N, L], {factor: held-out mean log p(z) in nats}).
    """
    loc, scale = np.asarray(loc, np.float64), np.asarray(scale, np.float64)
    logits = np.zeros(len(loc))
    spread = loc.std(axis=0)
    widened = (lambda factor: np.sqrt(scale**2 + (factor * spread) ** 2))
    scores = {factor: mean_log_likelihood(held_out, logits, loc, widened(factor)) for factor in factors}
    return logits, loc, widened(max(scores, key=scores.get)), scores
