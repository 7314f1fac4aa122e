"""Priors p(z) beyond N(0, I): a learned mixture of Gaussians and the VampPrior.

Neither has a closed-form KL against a Gaussian posterior, so the KL code
takes its Monte-Carlo path (log q(z|x) − log p(z) at the reparameterized z).

References:
    Tomczak & Welling (2018). VAE with a VampPrior. AISTATS.
    Dilokthanakul et al. (2016). Deep Unsupervised Clustering with Gaussian
        Mixture Variational Autoencoders.
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.errors import UserError

tfd = tfp.distributions
PRIORS = ("normal", "mog", "vamp")


def gaussian_mixture(logits, loc, scale):
    """Σ_k π_k N(loc_k, diag(scale_k²)) with K components over L dimensions ([K], [K, L], [K, L])."""
    return tfd.MixtureSameFamily(
        tfd.Categorical(logits=logits), tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)
    )


def add_prior_weights(model, name, components):
    """Creates the prior's trainable weights on `model`; returns nothing for the standard prior."""
    if name not in PRIORS:
        raise UserError(f"--prior must be one of {', '.join(PRIORS)}. Received: prior={name!r}.")
    if name != "normal" and (not isinstance(components, int) or components <= 0):
        raise UserError(f"--prior-components must be a positive integer. Received: {components!r}.")
    if name == "mog":
        model.prior_logits = model.add_weight(shape=(components,), initializer="zeros", name="prior_logits")
        model.prior_loc = model.add_weight(
            shape=(components, model.latent_dim), initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="prior_loc")
        model.prior_raw_scale = model.add_weight(
            shape=(components, model.latent_dim), initializer=keras.initializers.Constant(0.5413),  # softplus⁻¹(1)
            name="prior_raw_scale")
    elif name == "vamp":
        model.pseudo_inputs = model.add_weight(
            shape=(components,) + tuple(model.image_shape),
            initializer=keras.initializers.RandomUniform(0.0, 1.0), name="pseudo_inputs")


def learned_prior(model, name):
    """p(z) for a model whose weights `add_prior_weights` created."""
    if name == "mog":
        return gaussian_mixture(model.prior_logits, model.prior_loc, tf.nn.softplus(model.prior_raw_scale) + 1e-4)
    # VampPrior: p(z) = (1/K) Σ_k q(z | u_k), the posterior at K learned pseudo-inputs u_k.
    loc, scale = model.encode(model.pseudo_inputs)
    components = tf.shape(loc)[0]
    return gaussian_mixture(tf.zeros([components]), loc, scale)
