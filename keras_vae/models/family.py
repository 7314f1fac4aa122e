"""Variants of the VAE: each overrides the one part that differs.

References:
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
from keras_vae.errors import UserError
from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.vae import VAE
from keras_vae.networks import build_networks, condition_encoder


@register_model("beta_vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class BetaVAE(VAE):
    """β-VAE with controlled capacity (Burgess et al. 2018): recon + γ·|KL − C|, γ = `--beta`,
    C rising linearly to `--capacity-max` nats over `--capacity-steps` steps.

    disentanglement_lib calls this objective AnnealedVAE; with `capacity_max=0`
    it is Higgins et al.'s β-VAE (recon + β·KL).
    """

    hyperparameters = (
        H("capacity_max", float, 25.0, "The KL capacity C reached, in nats.", minimum=0,
          reference="Burgess et al. 2018"),
        H("capacity_steps", int, 100000, "Steps over which C rises linearly from 0.", minimum=0),
    )
    unused_hyperparameters = ("free_bits",)

    def metric_names(self):
        return super().metric_names() + ("capacity",)

    def regularizer(self, terms, beta):
        step = self.optimizer.iterations if self.optimizer is not None else 0
        terms["capacity"] = losses.capacity(step, self.capacity_max, self.capacity_steps)
        return losses.capacity_regularizer(terms["kl"], beta, terms["capacity"])


@register_model("iwae")
@keras.saving.register_keras_serializable(package="keras_vae")
class IWAE(VAE):
    """The importance-weighted autoencoder (Burda et al. 2016): maximizes the k-sample bound
    log (1/k) Σ_i p(x, z_i)/q(z_i|x); its reported `elbo` is that bound (k = `--iw-k`)."""

    hyperparameters = (
        H("iw_k", int, 5, "Importance samples per example in the training bound.", minimum=1,
          reference="Burda et al. 2016"),
    )
    unused_hyperparameters = ("beta", "kl_warmup_steps", "free_bits")

    def compute_terms(self, x, training=False, y=None):
        terms = super().compute_terms(x, training, y)  # the one-sample terms, for the recon / KL logs
        log_weights, _ = self.importance_log_weights(x, self.iw_k, seed=self.noise_seed(), y=y)  # (k, B)
        terms["elbo"] = losses.iwae_bound(log_weights)
        return terms

    def objective(self, terms, beta):
        return -tf.reduce_mean(terms["elbo"])


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
    unused_hyperparameters = ("prior", "prior_components", "prior_refit")

    def __init__(self, image_shape, num_classes=10, **kwargs):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(
                "cvae needs a labelled dataset with at least 2 classes "
                f"(a .npz with y, or an image folder with one sub-folder per class). Received: {num_classes!r} classes."
            )
        self.num_classes = num_classes
        super().__init__(image_shape, **kwargs)

    def build_networks(self):
        encoder, _ = build_networks(self.architecture, self.image_shape, self.latent_dim, self.encoder_outputs())
        # The decoder reads [z, one_hot(y)]: built for a code of L + K inputs.
        _, decoder = build_networks(
            self.architecture, self.image_shape, self.latent_dim + self.num_classes, self.encoder_outputs(),
            self.decoder_channels())
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
