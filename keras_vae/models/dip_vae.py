"""DIP-VAE (Kumar et al. 2018): the aggregate posterior's covariance pushed towards I.

Type i penalizes the covariance of the posterior means, type ii that plus the
mean posterior variance (`losses.dip_vae_penalty`):
λ_od Σ_{i≠j} Cov_ij² + λ_d Σ_i (Cov_ii − 1)², added to the VAE's loss.

References:
    Kumar, Sattigeri & Balakrishnan (2018). Variational Inference of Disentangled
        Latent Concepts from Unlabeled Observations. ICLR.
"""

import keras

from keras_vae import losses
from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.vae import VAE


@register_model("dip_vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class DIPVAE(VAE):
    """DIP-VAE, types i and ii: the VAE loss plus a covariance penalty on the aggregate posterior."""

    hyperparameters = (
        H("dip_type", str, "i", "DIP-VAE-I (means) or -II (means and variances).", choices=("i", "ii"),
          reference="Kumar et al. 2018"),
        H("lambda_od", float, 10.0, "Weight of the off-diagonal covariance penalty.", minimum=0),
        H("lambda_d", float, None, "Weight of the diagonal penalty (default: 10·λ_od for type i, λ_od for ii).",
          minimum=0, nullable=True),
    )

    def metric_names(self):
        return super().metric_names() + ("dip_penalty",)

    def regularizer(self, terms, beta):
        lambda_d = self.lambda_d if self.lambda_d is not None else self.lambda_od * (10 if self.dip_type == "i" else 1)
        terms["dip_penalty"], _ = losses.dip_vae_penalty(terms["posterior_loc"], terms["posterior_scale"],
                                                         self.lambda_od, lambda_d, self.dip_type)
        return super().regularizer(terms, beta) + terms["dip_penalty"]
