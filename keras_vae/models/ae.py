"""The deterministic autoencoders: a point-mass code z = f(x), no prior, no KL, no ELBO.

The baseline that shows why the VAE exists: the code space has no prior to
sample from, so `sample` decodes N(0, I) draws the decoder never saw.

References:
    Vincent et al. (2008). Extracting and Composing Robust Features with
        Denoising Autoencoders. ICML.
"""

import keras
import tensorflow as tf

from keras_vae.distributions import DeterministicPosterior
from keras_vae.errors import UserError
from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.base import Autoencoder, elbo_terms

NOISES = ("gaussian", "masking")


@register_model("ae")
@keras.saving.register_keras_serializable(package="keras_vae")
class AE(Autoencoder):
    """The deterministic autoencoder: z = f(x), loss = −log p(x | f(x)); no KL, no ELBO."""

    has_elbo = False

    def __init__(self, image_shape, **kwargs):
        super().__init__(image_shape, **kwargs)
        self.posterior_layer = DeterministicPosterior(self.latent_dim, name="posterior")

    def compute_terms(self, x, training=False, y=None):
        code, _ = self.posterior_layer.parameters(
            self.encoder(self.encoder_inputs(self.corrupt(x, training), y), training=training))
        reconstruction_loss = -self.likelihood(code, training=training, y=y).log_prob(x)  # (B,)
        return elbo_terms(reconstruction_loss, tf.zeros_like(reconstruction_loss))

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """No bound exists: the `score` signature reports log p(x | f(x)) in both outputs."""
        code, _ = self.encode(x, y)
        log_likelihood = self.likelihood(code, y=y).log_prob(x)  # (B,)
        return tf.tile(log_likelihood[None], [num_samples, 1]), log_likelihood


@register_model("dae")
@keras.saving.register_keras_serializable(package="keras_vae")
class DAE(AE):
    """The denoising autoencoder: encodes a corrupted x, reconstructs the clean x (Vincent et al. 2008).

    Args (besides `AE`'s):
        noise: "gaussian" (x + σ·ε) or "masking" (each pixel zeroed with probability `noise_level`).
        noise_level: σ, or the masked fraction.
    """

    hyperparameters = (
        H("noise", str, "gaussian", "Corruption: additive Gaussian noise or masking.", choices=NOISES,
          reference="Vincent et al. 2008"),
        H("noise_level", float, 0.3, "The Gaussian's std, or the masked fraction.", minimum=0),
    )

    def __init__(self, image_shape, **kwargs):
        super().__init__(image_shape, **kwargs)
        if self.noise == "masking" and not self.noise_level < 1:
            raise UserError(f"--noise-level is the masked fraction and must be below 1. Received: {self.noise_level!r}.")

    def corrupt(self, x, training=False):
        if not training:
            return x
        seed = self.noise_seed()
        if self.noise == "gaussian":
            return x + self.noise_level * tf.random.stateless_normal(tf.shape(x), seed=seed, dtype=x.dtype)
        keep = tf.random.stateless_uniform(tf.shape(x), seed=seed) >= self.noise_level
        return x * tf.cast(keep, x.dtype)
