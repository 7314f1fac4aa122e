"""The autoencoder family: each model overrides the one part that differs from the VAE.

References:
    Vincent et al. (2008). Extracting and Composing Robust Features with
        Denoising Autoencoders. ICML.
    Burgess et al. (2018). Understanding disentangling in β-VAE. arXiv:1804.03599.
    Burda, Grosse & Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
"""

import keras
import tensorflow as tf

from keras_vae import losses
from keras_vae.distributions import DeterministicPosterior
from keras_vae.errors import UserError
from keras_vae.models import register_model
from keras_vae.models.base import VAE


@register_model("ae")
@keras.saving.register_keras_serializable(package="keras_vae")
class AE(VAE):
    """The deterministic autoencoder: z = f(x), loss = −log p(x | f(x)); no KL, no ELBO.

    The baseline that shows why the VAE exists: its code space has no prior to
    sample from, so `sample` decodes N(0, I) draws the decoder never saw.
    """

    has_elbo = False

    def num_posterior_params(self):
        return self.latent_dim

    def build_posterior_layer(self):
        return DeterministicPosterior(self.latent_dim, name="posterior")

    def metric_names(self):
        return ("loss", "reconstruction_loss")

    def compute_terms(self, x, training=False):
        code, _ = self.posterior_layer.parameters(self.encoder(self.corrupt(x, training), training=training))
        reconstruction_loss = -self.likelihood(code, training=training).log_prob(x)  # (B,)
        return {"reconstruction_loss": reconstruction_loss, "kl": tf.zeros_like(reconstruction_loss),
                "elbo": -reconstruction_loss, "kl_per_dim": None}

    def objective(self, terms, beta):
        return tf.reduce_mean(terms["reconstruction_loss"])

    def importance_log_weights(self, x, num_samples, seed):
        """No bound exists: the `score` signature reports log p(x | f(x)) in both outputs."""
        code, _ = self.encode(x)
        log_likelihood = self.likelihood(code).log_prob(x)  # (B,)
        return tf.tile(log_likelihood[None], [num_samples, 1]), log_likelihood


@register_model("dae")
@keras.saving.register_keras_serializable(package="keras_vae")
class DAE(AE):
    """The denoising autoencoder: encodes a corrupted x, reconstructs the clean x (Vincent et al. 2008).

    Args:
        noise: "gaussian" (x + σ·ε) or "masking" (each pixel zeroed with probability `noise_level`).
        noise_level: σ, or the masked fraction.
    """

    def __init__(self, noise="gaussian", noise_level=0.3, **kwargs):
        if noise not in ("gaussian", "masking"):
            raise UserError(f"noise must be gaussian or masking. Received: noise={noise!r}.")
        self.noise, self.noise_level = noise, float(noise_level)
        super().__init__(**kwargs)

    @classmethod
    def config_kwargs(cls, config, image_shape):
        return dict(super().config_kwargs(config, image_shape), noise=config.noise, noise_level=config.noise_level)

    def corrupt(self, x, training=False):
        if not training:
            return x
        seed = self.noise_seed()
        if self.noise == "gaussian":
            return x + self.noise_level * tf.random.stateless_normal(tf.shape(x), seed=seed, dtype=x.dtype)
        keep = tf.random.stateless_uniform(tf.shape(x), seed=seed) >= self.noise_level
        return x * tf.cast(keep, x.dtype)

    def get_config(self):
        return dict(super().get_config(), noise=self.noise, noise_level=self.noise_level)


@register_model("beta_vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class BetaVAE(VAE):
    """β-VAE with controlled capacity (Burgess et al. 2018): recon + γ·|KL − C|, γ = `--beta`,
    C rising linearly to `--capacity-max` nats over `--capacity-steps` steps.

    With `capacity_max=0` it is Higgins et al.'s β-VAE (recon + β·KL).
    """

    def __init__(self, capacity_max=25.0, capacity_steps=100000, **kwargs):
        self.capacity_max, self.capacity_steps = float(capacity_max), int(capacity_steps)
        super().__init__(**kwargs)

    @classmethod
    def config_kwargs(cls, config, image_shape):
        return dict(super().config_kwargs(config, image_shape), capacity_max=config.capacity_max,
                    capacity_steps=config.capacity_steps)

    def metric_names(self):
        return super().metric_names() + ("capacity",)

    def current_capacity(self):
        step = self.optimizer.iterations if self.optimizer is not None else 0
        return losses.capacity(step, self.capacity_max, self.capacity_steps)

    def regularizer(self, terms, beta):
        return losses.capacity_regularizer(terms["kl"], beta, self.current_capacity())

    def losses_and_terms(self, data, training):
        loss, terms, beta = super().losses_and_terms(data, training)
        terms["capacity"] = tf.fill(tf.shape(terms["kl"]), self.current_capacity())
        return loss, terms, beta

    def get_config(self):
        return dict(super().get_config(), capacity_max=self.capacity_max, capacity_steps=self.capacity_steps)


@register_model("iwae")
@keras.saving.register_keras_serializable(package="keras_vae")
class IWAE(VAE):
    """The importance-weighted autoencoder (Burda et al. 2016): maximizes the k-sample bound
    log (1/k) Σ_i p(x, z_i)/q(z_i|x); its reported `elbo` is that bound (k = `--iw-k`)."""

    def __init__(self, iw_k=5, **kwargs):
        if not isinstance(iw_k, int) or iw_k <= 0:
            raise UserError(f"iw_k must be a positive integer. Received: iw_k={iw_k!r}.")
        self.iw_k = iw_k
        super().__init__(**kwargs)

    @classmethod
    def config_kwargs(cls, config, image_shape):
        return dict(super().config_kwargs(config, image_shape), iw_k=config.iw_k)

    def compute_terms(self, x, training=False):
        terms = super().compute_terms(x, training)  # the one-sample terms, for the recon / KL logs
        log_weights, _ = self.importance_log_weights(x, self.iw_k, seed=self.noise_seed())  # (k, B)
        terms["elbo"] = losses.iwae_bound(log_weights)
        return terms

    def objective(self, terms, beta):
        return -tf.reduce_mean(terms["elbo"])

    def get_config(self):
        return dict(super().get_config(), iw_k=self.iw_k)
