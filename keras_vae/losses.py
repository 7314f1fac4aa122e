"""Small pure functions for the terms of the ELBO and its relatives.

All quantities are in nats per example: log-probabilities are summed over
pixels and KL terms over latent dimensions.

References:
    Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR.
    Burda, Grosse & Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    Kingma et al. (2016). Improved Variational Inference with Inverse
        Autoregressive Flow. NeurIPS (free bits, eq. 15).
"""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.distribute import global_batch_mean
from keras_vae.errors import UserError

tfd = tfp.distributions


def kl_divergence(posterior, prior, z=None):
    """KL(q(z|x) ‖ p(z)) per example.

    Uses tfp's KL registry (`tfd.kl_divergence`) where an analytic form is
    registered, and otherwise the single-sample Monte-Carlo estimate
    log q(z|x) - log p(z) at the reparameterized sample `z`.

    Args:
        posterior: q(z|x), batch shape [B], event shape [L].
        prior: p(z), event shape [L].
        z: a sample of q, shape [B, L]; needed only when no analytic KL exists.

    Returns:
        Tensor [B].
    """
    try:
        return tfd.kl_divergence(posterior, prior)
    except NotImplementedError:
        if z is None:
            raise ValueError(
                f"No analytic KL between {type(posterior).__name__} and "
                f"{type(prior).__name__} is registered; pass a sample `z`."
            ) from None
        return posterior.log_prob(z) - prior.log_prob(z)


def kl_per_dimension(posterior, prior):
    """Analytic KL per latent dimension, [B, L], or None when it has no such form.

    Defined when q and p are `Independent` wrappers of factorized
    distributions with a registered KL (the diagonal-Gaussian case).
    """
    inner_q = getattr(posterior, "distribution", None)
    inner_p = getattr(prior, "distribution", None)
    if inner_q is None or inner_p is None:
        return None
    try:
        return tfd.kl_divergence(inner_q, inner_p)
    except NotImplementedError:
        return None


def free_bits_kl(kl_per_dim, free_bits, kept_gradient=None):
    """KL with a floor of `free_bits` nats on each dimension's batch mean.

    Implements the "free bits" objective of Kingma et al. (2016), eq. 15:
    sum_j max(λ, E_batch[KL_j]). Dimensions already above λ are penalized as
    usual; those below stop being pushed towards the prior.

    Under tf.distribute, the global batch's means (sums and counts all-reduced)
    decide which dimensions are floored, so that every replica floors the same
    ones, as one device would; a dimension that is not floored contributes this
    replica's own batch mean. Every replica must call it (it synchronizes them).

    Args:
        kl_per_dim: [B, L] KL per example and dimension.
        free_bits: λ, nats per dimension.
        kept_gradient: optional [B, L] terms whose batch mean's gradient a floored dimension keeps (its value
            stays λ): for a learned prior's fit to the codes, which the floor should not stop.

    Returns:
        Scalar: the regularizer for the batch (a per-example mean).
    """
    mean_kl = tf.reduce_mean(kl_per_dim, axis=0)  # (B, L) -> (L,)
    above = tf.stop_gradient(global_batch_mean(kl_per_dim)) >= free_bits  # at a tie, max()'s gradient: the mean's
    floor = tf.cast(free_bits, kl_per_dim.dtype)
    if kept_gradient is not None:
        fit = tf.reduce_mean(kept_gradient, axis=0)
        floor = floor + (fit - tf.stop_gradient(fit))
    return tf.reduce_sum(tf.where(above, mean_kl, floor))


def warmup_beta(step, beta, warmup_steps):
    """β at optimizer step `step` under a linear KL warm-up from 0 over `warmup_steps`."""
    if warmup_steps <= 0:
        return tf.constant(float(beta), tf.float32)
    ramp = tf.cast(step + 1, tf.float32) / float(warmup_steps)
    return float(beta) * tf.minimum(1.0, ramp)


def log_mean_exp(log_values, axis=0):
    """log(mean(exp(v))) computed stably."""
    count = tf.cast(tf.shape(log_values)[axis], log_values.dtype)
    return tf.reduce_logsumexp(log_values, axis=axis) - tf.math.log(count)


def iwae_bound(log_weights, axis=0):
    """The k-sample importance-weighted bound log (1/k) Σ_i w_i (Burda et al., eq. 8).

    Args:
        log_weights: log p(x, z_i) - log q(z_i|x), shape [k, B] (k on `axis`).

    Returns:
        Tensor [B]: a lower bound on log p(x) that tightens as k grows; with
        k=1 it is the ELBO.
    """
    return log_mean_exp(log_weights, axis=axis)


def bits_per_dim(nll_nats, num_dims):
    """Converts nats per example into bits per dimension."""
    return nll_nats / (num_dims * math.log(2.0))


def capacity(step, capacity_max, capacity_steps):
    """The KL capacity C of Burgess et al. (2018), rising linearly from 0 to `capacity_max` nats."""
    if capacity_steps <= 0:
        return tf.constant(float(capacity_max), tf.float32)
    return float(capacity_max) * tf.minimum(1.0, tf.cast(step, tf.float32) / float(capacity_steps))


def capacity_regularizer(kl, gamma, capacity_value):
    """γ·|KL − C| (Burgess et al. 2018, eq. 8): the KL is pulled towards C, not towards 0."""
    return gamma * tf.abs(tf.reduce_mean(kl) - capacity_value)


def gaussian_log_density_matrix(z, loc, scale):
    """log q(z_id | x_j) for every sample i, posterior j and dimension d.

    The pairwise densities of the minibatch estimators of Chen et al. (2018),
    section 3: the closed form of the Normal log density,
    -((z - μ)/σ)²/2 - log σ - log(2π)/2, evaluated in log space.

    References:
        Chen, Li, Grosse & Duvenaud (2018). Isolating Sources of
        Disentanglement in Variational Autoencoders. NeurIPS.

    Args:
        z: samples, [M, L].
        loc: posterior means, [M, L].
        scale: posterior standard deviations, [M, L].

    Returns:
        Tensor [M, M, L]; entry [i, j, d] is log N(z_id; loc_jd, scale_jd).
    """
    z = tf.cast(z, tf.float32)[:, None, :]  # (M, 1, L)
    loc = tf.cast(loc, tf.float32)[None, :, :]  # (1, M, L)
    scale = tf.cast(scale, tf.float32)[None, :, :]  # (1, M, L)
    standardized = (z - loc) / scale  # (M, M, L)
    return -0.5 * tf.square(standardized) - tf.math.log(scale) - 0.5 * math.log(2.0 * math.pi)


def total_correlation_decomposition(z, loc, scale, dataset_size=None):
    """The β-TCVAE decomposition of the KL term into MI, TC and dimension-wise KL.

    Chen et al. (2018), eq. 2: E_p(n)[KL(q(z|n) ‖ p(z))] = I_q(z; n)
    + KL(q(z) ‖ Π_d q(z_d)) + Σ_d KL(q(z_d) ‖ p(z_d)), with p(z) = N(0, I).
    The aggregate posterior is estimated by minibatch-weighted sampling
    (section 3, eq. S4):

        log q(z_i) ≈ logsumexp_j Σ_d log q(z_id|x_j) − log(N·M)
        log Π_d q(z_id) ≈ Σ_d [logsumexp_j log q(z_id|x_j) − log(N·M)]

    With `dataset_size=None` the batch is treated as the whole data set, so
    q(z) = (1/M) Σ_j q(z|x_j) exactly and the normalizer is log M (not
    log(M·M)): the terms are then the exact decomposition for the batch's
    empirical aggregate posterior, evaluated at the samples.

    For any normalizer the three terms sum to the Monte-Carlo KL
    mean_i[log q(z_i|x_i) − log p(z_i)].

    References:
        Chen, Li, Grosse & Duvenaud (2018). Isolating Sources of
        Disentanglement in Variational Autoencoders. NeurIPS.

    Args:
        z: z_i ~ q(z|x_i), [M, L].
        loc: posterior means, [M, L].
        scale: posterior standard deviations, [M, L].
        dataset_size: N, the number of training examples; None for N = M
            with the exact batch normalization above.

    Returns:
        Dict of scalar float32 tensors `mutual_information`,
        `total_correlation` and `dimension_wise_kl`, in nats.
    """
    z = tf.cast(z, tf.float32)
    log_q_matrix = gaussian_log_density_matrix(z, loc, scale)  # (M, M, L)
    batch_size = tf.cast(tf.shape(z)[0], tf.float32)
    if dataset_size is None:
        log_normalizer = tf.math.log(batch_size)
    else:
        log_normalizer = tf.math.log(batch_size) + math.log(float(dataset_size))

    joint = tf.reduce_sum(log_q_matrix, axis=2)  # (M, M, L) -> (M, M)
    log_q_z_given_x = tf.linalg.diag_part(joint)  # (M, M) -> (M,)
    log_q_z = tf.reduce_logsumexp(joint, axis=1) - log_normalizer  # (M, M) -> (M,)
    marginals = tf.reduce_logsumexp(log_q_matrix, axis=1) - log_normalizer  # (M, M, L) -> (M, L)
    log_prod_q_z = tf.reduce_sum(marginals, axis=1)  # (M, L) -> (M,)
    log_p_z = tf.reduce_sum(-0.5 * tf.square(z) - 0.5 * math.log(2.0 * math.pi), axis=1)  # (M, L) -> (M,)

    return {
        "mutual_information": tf.reduce_mean(log_q_z_given_x - log_q_z),
        "total_correlation": tf.reduce_mean(log_q_z - log_prod_q_z),
        "dimension_wise_kl": tf.reduce_mean(log_prod_q_z - log_p_z),
    }


def dip_vae_penalty(loc, scale, lambda_od, lambda_d, kind):
    """The DIP-VAE regularizer: moments of the aggregate posterior pushed towards N(0, I).

    Kumar, Sattigeri & Balakrishnan (2018), eqs. 6 (DIP-VAE-I) and 7
    (DIP-VAE-II): Cov_q(z) = Cov_batch[μ(x)] for kind "i", and
    Cov_batch[μ(x)] + E_batch[diag(σ²(x))] for kind "ii"; the penalty is
    λ_od Σ_{i≠j} Cov_ij² + λ_d Σ_i (Cov_ii − 1)². The batch covariance uses
    the 1/M normalization.

    References:
        Kumar, Sattigeri & Balakrishnan (2018). Variational Inference of
        Disentangled Latent Concepts from Unlabeled Observations. ICLR.

    Args:
        loc: posterior means, [M, L].
        scale: posterior standard deviations, [M, L].
        lambda_od: weight of the off-diagonal term.
        lambda_d: weight of the diagonal term.
        kind: "i" or "ii".

    Returns:
        (penalty, covariance): a scalar and the [L, L] covariance it penalizes.

    Raises:
        UserError: `kind` is neither "i" nor "ii".
    """
    if kind not in ("i", "ii"):
        raise UserError(f"kind must be 'i' or 'ii'. Received: kind={kind!r}.")
    loc = tf.cast(loc, tf.float32)
    centered = loc - tf.reduce_mean(loc, axis=0, keepdims=True)  # (M, L) -> (M, L)
    batch_size = tf.cast(tf.shape(loc)[0], tf.float32)
    covariance = tf.matmul(centered, centered, transpose_a=True) / batch_size  # (M, L) -> (L, L)
    if kind == "ii":
        variance = tf.reduce_mean(tf.square(tf.cast(scale, tf.float32)), axis=0)  # (M, L) -> (L,)
        covariance = covariance + tf.linalg.diag(variance)
    diagonal = tf.linalg.diag_part(covariance)  # (L, L) -> (L,)
    off_diagonal = covariance - tf.linalg.diag(diagonal)
    off_diagonal_term = tf.reduce_sum(tf.square(off_diagonal))  # (L, L) -> ()
    diagonal_term = tf.reduce_sum(tf.square(diagonal - 1.0))  # (L,) -> ()
    penalty = tf.cast(lambda_od, tf.float32) * off_diagonal_term + tf.cast(lambda_d, tf.float32) * diagonal_term
    return penalty, covariance


def committed_rate_scale(delta_per_dim):
    """The largest posterior std σ_u < 1 whose Gaussian is at least `delta_per_dim` nats from N(0, 1) whatever
    its mean: the root of ½(σ² − 1 − log σ²) = δ on (0, 1) (Razavi et al. 2019, independent latents).

    KL(N(μ, σ²) ‖ N(0, 1)) = ½(σ² + μ² − 1 − log σ²) ≥ ½(σ² − 1 − log σ²), which falls on (0, 1]
    to 0 at σ = 1, so every σ ≤ σ_u keeps the KL ≥ δ. Found by bisection on t = log σ² in [−2δ − 2, 0],
    where ½(e^t − 1 − t) falls from above δ to 0; the root kept is on the safe side.
    """
    if not delta_per_dim > 0:
        raise ValueError(f"delta_per_dim must be positive. Received: {delta_per_dim!r}.")
    low, high = -2.0 * delta_per_dim - 2.0, 0.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if 0.5 * (math.exp(middle) - 1 - middle) > delta_per_dim:
            low = middle
        else:
            high = middle
    return math.exp(0.5 * low)
