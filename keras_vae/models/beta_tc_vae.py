"""β-TCVAE (Chen et al. 2018): β weighs only the total correlation of the aggregate posterior.

The KL splits into index-code MI + total correlation + dimension-wise KL
(their eq. 2), estimated on each batch by minibatch-weighted sampling
(`losses.total_correlation_decomposition`, the batch as the data set). The
loss is recon + w·[KL + (β − 1)·TC] with w the KL warm-up, as in
disentanglement_lib; the three terms are logged.

References:
    Chen, Li, Grosse & Duvenaud (2018). Isolating Sources of Disentanglement in VAEs. NeurIPS.
"""

import keras
import tensorflow as tf

from keras_vae import losses
from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.vae import VAE

TERMS = ("mutual_information", "total_correlation", "dimension_wise_kl")


@register_model("beta_tc_vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class BetaTCVAE(VAE):
    """β-TCVAE: the total correlation of q(z) weighted by β, the rest of the KL by 1."""

    hyperparameters = (H("beta", float, 6.0, "Weight of the total correlation (1: the VAE).", minimum=0,
                         reference="Chen et al. 2018"),)
    unused_hyperparameters = ("free_bits",)

    def metric_names(self):
        return super().metric_names() + TERMS

    def regularizer(self, terms, beta):
        terms.update(losses.total_correlation_decomposition(terms["z"], terms["posterior_loc"],
                                                            terms["posterior_scale"]))
        weight = self.kl_weight()
        return weight * tf.reduce_mean(terms["kl"]) + (beta - weight) * terms["total_correlation"]
