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


def free_bits_kl(kl_per_dim, free_bits):
    """KL with a floor of `free_bits` nats on each dimension's batch mean.

    Implements the "free bits" objective of Kingma et al. (2016), eq. 15:
    sum_j max(λ, E_batch[KL_j]). Dimensions already above λ are penalized as
    usual; those below stop being pushed towards the prior.

    Args:
        kl_per_dim: [B, L] KL per example and dimension.
        free_bits: λ, nats per dimension.

    Returns:
        Scalar: the regularizer for the batch (a per-example mean).
    """
    mean_kl = tf.reduce_mean(kl_per_dim, axis=0)  # (B, L) -> (L,)
    return tf.reduce_sum(tf.maximum(mean_kl, free_bits))


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
