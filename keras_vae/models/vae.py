"""The variational autoencoder: a diagonal-Gaussian posterior q(z|x) and a prior p(z).

The ELBO (Kingma & Welling 2014, eq. 3), in nats per example:

    ELBO(x) = E_q(z|x)[log p(x|z)] − KL(q(z|x) ‖ p(z)) = −reconstruction_loss − kl

Training minimizes mean(reconstruction_loss) + β·KL, with an optional KL
warm-up (β rising linearly from 0) and free bits. The KL is analytic through
tfp's KL registry where one exists, Monte-Carlo otherwise (learned priors).

References:
    Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR.
    Higgins et al. (2017). β-VAE. ICLR.
    Bowman et al. (2016); Sønderby et al. (2016): KL warm-up.
    Kingma et al. (2016). Improved Variational Inference with Inverse Autoregressive Flow: free bits.
    Tomczak & Welling (2018). VAE with a VampPrior. AISTATS.
    He et al. (2019). Lagging Inference Networks and Posterior Collapse in VAEs. ICLR: aggressive encoder.
"""

import math

import keras
import tensorflow as tf

from keras_vae import dequantization, losses, priors
from keras_vae.config import REFIT_METHODS
from keras_vae.distributions import NormalPosterior, standard_normal_prior
from keras_vae.errors import UserError
from keras_vae.hparams import Hyperparameter as H
from keras_vae.models import register_model
from keras_vae.models.base import Autoencoder, elbo_terms

POSTERIOR_SCALES = ("softplus", "exp")


@register_model("vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class VAE(Autoencoder):
    """A variational autoencoder with a diagonal-Gaussian posterior.

    Args (besides `Autoencoder`'s):
        posterior_scale: "softplus" or "exp", how q's raw scale is made positive.
        beta: the weight of the KL term.
        kl_warmup_steps: β rises linearly from 0 to `beta` over this many steps.
        free_bits: a floor, in nats, on each latent dimension's batch-mean KL in
            the loss. Reported `kl` and `elbo` are the true values.
        prior: "normal" (N(0, I)), "mog" (a learned mixture) or "vamp" (VampPrior).
        prior_components: mixture components / pseudo-inputs of a learned prior.
        prior_refit: "none", "em" or "aggregate": how `train.fit` refits a `mog` prior once training ends
            (`keras_vae.code_prior.refit_mixture_prior`).
        mixture_components: the `mog` prior's size when it is not `prior_components` (set by an aggregate
            refit, which gives it one component per training example).
        dequantize: "none", "uniform" or "variational" (`keras_vae.dequantization`).
        aggressive_encoder: train in phases (`keras_vae.callbacks.AggressiveEncoder`, which `train.fit` adds).

    Example:
        >>> model = VAE(image_shape=(28, 28, 1), latent_dim=8)
        >>> model.compile(optimizer="adam")
        >>> model.fit(images, epochs=1)
    """

    hyperparameters = (
        H("posterior_scale", str, "softplus", "How q(z|x)'s scale is made positive.", choices=POSTERIOR_SCALES),
        H("beta", float, 1.0, "Weight of the KL term.", minimum=0, reference="Higgins et al. 2017"),
        H("kl_warmup_steps", int, None, "Steps over which beta rises linearly from 0 (default: half the run's "
          "steps).", minimum=0, nullable=True, reference="Bowman et al. 2016"),
        H("free_bits", float, 0.0, "Floor on each latent dimension's KL in the loss, in nats.", minimum=0,
          reference="Kingma et al. 2016"),
        H("prior", str, "normal", "p(z): normal, mog (learned mixture) or vamp (VampPrior).", choices=priors.PRIORS,
          attribute="prior_name", reference="Tomczak & Welling 2018"),
        H("prior_components", int, 10, "Components / pseudo-inputs of a learned prior.", minimum=1),
        H("prior_refit", str, "none", "After training, refit a mog prior to the training codes: em (EM from the "
          "trained mixture) or aggregate (one component per training example's posterior, widened by a bandwidth "
          "chosen on held-out codes); kept where held-out codes are likelier under it. Given, it needs --prior mog; "
          "a dataset's default refit is skipped for other priors.",
          choices=("none", *REFIT_METHODS), reference="Ghosh et al. 2020; Norouzi et al. 2020"),
        H("dequantize", str, "none", "For 8-bit data under a continuous likelihood: score y = (k + u)/256 with u "
          "uniform or from a learned flow q(u|k), so the ELBO bounds the discrete likelihood.",
          choices=dequantization.DEQUANTIZERS, reference="Ho et al. 2019"),
        H("aggressive_encoder", bool, False, "Lagging-inference remedy: from the start, train the inference "
          "network alone on fresh batches until its loss stops falling, then take one decoder step; end when "
          "I(x; z) on validation images stops rising at an epoch's end.", reference="He et al. 2019"),
    )

    @classmethod
    def resolve_hyperparameters(cls, values, total_steps):
        # None: half the run's optimizer steps (measured on Fashion-MNIST, 10 epochs, 2 seeds: test
        # -log p(x) 0.5 nats below a 1000-step warm-up, 0.2 below warming up over the whole run).
        values = dict(values)
        if "kl_warmup_steps" in values and values["kl_warmup_steps"] is None:
            values["kl_warmup_steps"] = (total_steps or 0) // 2
        return values

    def __init__(self, image_shape, mixture_components=None, **kwargs):
        super().__init__(image_shape, **kwargs)
        self.kl_warmup_steps = self.kl_warmup_steps or 0
        self.posterior_layer = NormalPosterior(self.latent_dim, self.posterior_scale, name="posterior")
        # A `mog` prior refitted to the aggregate posterior after training has its own size, recorded here
        # (not a hyperparameter: training, and a resumed run, use `prior_components`).
        self.mixture_components = mixture_components
        if self.prior_name != "normal":
            priors.add_prior_weights(self, self.prior_name, mixture_components or self.prior_components)
        if self.aggressive_encoder:  # (aggressive now, I(x; z) at the last epoch's end), read by the callback
            self.aggressive_state = keras.Variable([1.0, -1e9], dtype="float32", trainable=False,
                                                   name="aggressive_state")
            self.inference_iterations = keras.Variable(0, dtype="int64", trainable=False, name="inference_iterations",
                                                       aggregation="only_first_replica")
        if self.dequantize == "variational":
            self.dequantizer = dequantization.VariationalDequantizer(self.image_shape[-1], name="dequantizer")
            self.dequantizer.build((None, *self.image_shape))

    def encoder_outputs(self):
        return 2 * self.latent_dim  # loc and raw scale

    def get_config(self):
        config = super().get_config()
        if self.mixture_components is not None:
            config["mixture_components"] = self.mixture_components
        return config

    def apply_gradients(self, gradients, variables, phase=None):
        """An inference-only step counts in `inference_iterations`, not in the optimizer's `iterations`.

        As with the separate encoder and decoder optimizers of He et al. (2019): Adam's bias correction of the
        decoder's moments, the KL warm-up and the learning-rate schedule follow the decoder's updates, and the
        encoder's Adam its own. (Slots are per variable already; only the step count is shared.)"""
        if phase != "inference":
            return super().apply_gradients(gradients, variables, phase)
        iterations = self.optimizer.iterations
        decoder_steps = tf.identity(iterations)
        iterations.assign(self.inference_iterations)
        super().apply_gradients(gradients, variables, phase)
        self.inference_iterations.assign(iterations)
        iterations.assign(decoder_steps)

    def inference_layers(self):
        return [self.encoder, self.posterior_layer] + ([self.dequantizer] if self.dequantize == "variational" else [])

    def metric_names(self):
        return ("loss", "elbo", "reconstruction_loss", "kl", "beta")

    # ------------------------------------------------------ distributions
    def prior(self):
        """p(z)."""
        if self.prior_name == "normal":
            return standard_normal_prior(self.latent_dim)
        return priors.learned_prior(self, self.prior_name)

    def posterior(self, x, training=False, y=None):
        """q(z|x) for images x [B, H, W, C] (q(z|x, y) for a conditional model)."""
        return self.posterior_layer(self.encoder(self.encoder_inputs(x, y), training=training))

    def sample_codes(self, num_samples, seed, temperature=1.0):
        if self.prior_name == "normal":
            return super().sample_codes(num_samples, seed, temperature)
        if temperature != 1.0:
            raise UserError(f"--temperature applies to the N(0, I) prior only; this model's prior is {self.prior_name!r}.")
        return self.prior().sample(num_samples, seed=tf.cast(seed, tf.int32))

    def dequantized(self, x, seed):
        """(what the likelihood scores, nats added to its −log p) for images x [B, H, W, C]: (x, 0) without
        dequantization, else y = (k + u)/256 and D log 256 + log q(u|k) [B] (`keras_vae.dequantization`)."""
        if self.dequantize == "none":
            return x, 0.0
        levels = dequantization.pixel_levels(x)
        if self.dequantize == "uniform":
            u, log_q = tf.random.stateless_uniform(tf.shape(levels), seed=seed), 0.0
        else:
            u, log_q = self.dequantizer(x, seed)
        penalty = log_q + dequantization.change_of_variables(math.prod(self.image_shape))
        return dequantization.continuous_images(levels, u), penalty

    # ---------------------------------------------------------- objective
    def compute_terms(self, x, training=False, y=None):
        """The ELBO terms from one reparameterized sample, plus the sample `z` and the posterior's
        `posterior_loc` and `posterior_scale` [B, L] (for regularizers of the aggregate posterior)."""
        posterior = self.posterior(self.corrupt(x, training), training=training, y=y)
        z = posterior.sample(seed=self.noise_seed())  # (B, L), reparameterized
        target, penalty = self.dequantized(x, None if self.dequantize == "none" else self.noise_seed())
        reconstruction_loss = penalty - self.likelihood(z, training=training, y=y).log_prob(target)  # (B,)
        prior = self.prior()
        return elbo_terms(reconstruction_loss, losses.kl_divergence(posterior, prior, z),
                          losses.kl_per_dimension(posterior, prior), z=z, posterior_loc=posterior.mean(),
                          posterior_scale=posterior.stddev())

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """log p(x, z_k) - log q(z_k|x) for k = 1..num_samples, with stateless noise.

        Returns:
            (log_weights [K, B], elbo [B]): the ELBO here is the mean of the
            log-weights, an unbiased K-sample estimate.
        """
        posterior = self.posterior(x, y=y)
        z = posterior.sample(num_samples, seed=seed)  # (K, B, L)
        batch = tf.shape(z)[1]
        # One dequantization of x for all K codes: the weights estimate log p(y), a bound on log P(x) over u.
        target, penalty = self.dequantized(x, tf.random.experimental.stateless_fold_in(seed, 1))
        flat_z = tf.reshape(z, [-1, self.latent_dim])  # (K, B, L) -> (K*B, L)
        flat_x = tf.tile(target, [num_samples] + [1] * len(self.image_shape))  # (K*B, H, W, C)
        flat_y = tf.tile(y, [num_samples]) if y is not None else None  # (K*B,)
        log_likelihood = tf.reshape(self.likelihood(flat_z, y=flat_y).log_prob(flat_x), [num_samples, batch])
        log_weights = log_likelihood - penalty + self.prior().log_prob(z) - posterior.log_prob(z)  # (K, B)
        return log_weights, tf.reduce_mean(log_weights, axis=0)

    def kl_weight(self):
        """The KL warm-up factor in [0, 1] at this optimizer step."""
        step = self.optimizer.iterations if self.optimizer is not None else 0
        return losses.warmup_beta(step, 1.0, self.kl_warmup_steps)

    def current_beta(self):
        return self.beta * self.kl_weight()

    def regularizer(self, terms, beta):
        """β times the KL term of the loss, with free bits when asked for."""
        if self.free_bits > 0:
            if terms["kl_per_dim"] is not None:
                return beta * losses.free_bits_kl(terms["kl_per_dim"], self.free_bits)
            # No per-dimension form (a Monte-Carlo KL): floor the total instead, as one dimension.
            return beta * losses.free_bits_kl(terms["kl"][:, None], self.free_bits * self.latent_dim)
        return beta * tf.reduce_mean(terms["kl"])
