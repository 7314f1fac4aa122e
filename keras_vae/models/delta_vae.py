"""δ-VAE (Razavi et al. 2019): a committed rate, so the posterior cannot collapse.

With the prior N(0, I) and a diagonal-Gaussian posterior whose standard
deviations are bounded by σ_u < 1, every posterior is at least δ nats from
the prior:

    KL(q(z|x) ‖ p(z)) = Σ_d ½(σ_d² + μ_d² − 1 − log σ_d²) ≥ L · ½(σ_u² − 1 − log σ_u²) = δ,

with σ_u chosen from δ/L (`losses.committed_rate_scale`). No term is added
to the loss and the bound is the plain ELBO; the rate is committed by the
choice of families, whatever the decoder. This is the paper's form for
independent latents; its sequential form (an AR(1) prior over a sequence of
latents) is not built here.

References:
    Razavi, van den Oord, Poole & Vinyals (2019). Preventing Posterior Collapse with δ-VAEs. ICLR.
"""

import keras

from keras_vae import losses
from keras_vae.distributions import NormalPosterior
from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.vae import VAE


@register_model("delta_vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class DeltaVAE(VAE):
    """The VAE with posterior standard deviations bounded so that KL(q(z|x) ‖ N(0, I)) ≥ `delta` for every x."""

    hyperparameters = (
        H("delta", float, 10.0, "The committed rate: the least KL any posterior can have, in nats.", minimum=0,
          open_minimum=True, reference="Razavi et al. 2019"),
    )
    # The bound holds for the N(0, I) prior and the bounded scale; free bits would only floor what is floored.
    unused_hyperparameters = ("posterior_scale", "prior", "prior_components", "prior_refit", "free_bits")

    def __init__(self, image_shape, **kwargs):
        super().__init__(image_shape, **kwargs)
        self.posterior_layer = NormalPosterior(
            self.latent_dim, max_scale=losses.committed_rate_scale(self.delta / self.latent_dim), name="posterior")
