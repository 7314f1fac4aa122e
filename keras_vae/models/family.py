"""The autoencoder family: each model overrides the one part that differs from the VAE.

References:
    Vincent et al. (2008). Extracting and Composing Robust Features with
        Denoising Autoencoders. ICML.
    Burgess et al. (2018). Understanding disentangling in β-VAE. arXiv:1804.03599.
    Burda, Grosse & Salakhutdinov (2016). Importance Weighted Autoencoders. ICLR.
    Kingma, Rezende, Mohamed & Welling (2014). Semi-Supervised Learning with Deep
        Generative Models. NeurIPS.
    Sohn, Lee & Yan (2015). Learning Structured Output Representation using Deep
        Conditional Generative Models. NeurIPS.
"""

import keras
import tensorflow as tf

from keras_vae import losses
from keras_vae.distributions import DeterministicPosterior
from keras_vae.errors import UserError
from keras_vae.models import register_model
from keras_vae.models.base import VAE
from keras_vae.networks import build_networks, condition_encoder


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

    def compute_terms(self, x, training=False, y=None):
        code, _ = self.posterior_layer.parameters(
            self.encoder(self.encoder_inputs(self.corrupt(x, training), y), training=training))
        reconstruction_loss = -self.likelihood(code, training=training, y=y).log_prob(x)  # (B,)
        return {"reconstruction_loss": reconstruction_loss, "kl": tf.zeros_like(reconstruction_loss),
                "elbo": -reconstruction_loss, "kl_per_dim": None}

    def objective(self, terms, beta):
        return tf.reduce_mean(terms["reconstruction_loss"])

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """No bound exists: the `score` signature reports log p(x | f(x)) in both outputs."""
        code, _ = self.encode(x, y)
        log_likelihood = self.likelihood(code, y=y).log_prob(x)  # (B,)
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

    def compute_terms(self, x, training=False, y=None):
        terms = super().compute_terms(x, training, y)  # the one-sample terms, for the recon / KL logs
        log_weights, _ = self.importance_log_weights(x, self.iw_k, seed=self.noise_seed(), y=y)  # (k, B)
        terms["elbo"] = losses.iwae_bound(log_weights)
        return terms

    def objective(self, terms, beta):
        return -tf.reduce_mean(terms["elbo"])

    def get_config(self):
        return dict(super().get_config(), iw_k=self.iw_k)


@register_model("cvae")
@keras.saving.register_keras_serializable(package="keras_vae")
class CVAE(VAE):
    """The conditional VAE (Kingma et al. 2014; Sohn et al. 2015): q(z|x, y), p(x|z, y), p(z) = N(0, I).

    The label's one-hot joins the encoder's flattened image features and the
    decoder's input [z, one_hot(y)]. Its ELBO bounds the conditional log p(x|y).
    Batches are (x, y); `sample(..., y=k)` draws class k.

    Args:
        num_classes: K, the number of labels (from the dataset).
    """

    uses_labels = True
    own_prior = "cvae uses the N(0, I) prior"

    def __init__(self, num_classes=10, **kwargs):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(
                "cvae needs a labelled dataset with at least 2 classes "
                f"(a .npz with y, or an image folder with one sub-folder per class). Received: {num_classes!r} classes."
            )
        self.num_classes = num_classes
        super().__init__(**kwargs)

    @classmethod
    def from_fit_config(cls, config, image_shape, num_classes=0):
        return cls(**cls.config_kwargs(config, image_shape), num_classes=int(num_classes))

    def build_networks(self):
        encoder, _ = build_networks(self.architecture, self.image_shape, self.latent_dim, self.num_posterior_params())
        # The decoder reads [z, one_hot(y)]: built for a code of L + K inputs.
        _, decoder = build_networks(
            self.architecture, self.image_shape, self.latent_dim + self.num_classes, self.num_posterior_params())
        return condition_encoder(encoder, self.num_classes), decoder

    def one_hot(self, y):
        if y is None:
            raise UserError("cvae is conditional: give labels y (e.g. `keras-vae sample --label K`).")
        return tf.one_hot(tf.cast(y, tf.int32), self.num_classes, dtype=tf.float32)

    def encoder_inputs(self, x, y=None):
        return [tf.convert_to_tensor(x), self.one_hot(y)]

    def decoder_inputs(self, z, y=None):
        return tf.concat([z, self.one_hot(y)], axis=-1)

    def sample(self, num_samples, seed=0, temperature=1.0, y=None):
        """As `VAE.sample`; `y` is one label or [num_samples] labels (default: 0, 1, .., K-1, 0, ..)."""
        if y is None:
            y = tf.range(num_samples) % self.num_classes
        y = tf.broadcast_to(tf.cast(y, tf.int32), [num_samples])
        return super().sample(num_samples, seed, temperature, y)

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes)
