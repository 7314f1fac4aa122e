"""The base variational autoencoder and its one training loop.

The ELBO (Kingma & Welling 2014, eq. 3), in nats per example:

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) ‖ p(z))
            = -reconstruction_loss - kl

`train_step` minimizes `objective(terms)`, by default
mean(reconstruction_loss) + β·KL with optional KL warm-up and free bits.
Variants override one method: `compute_terms` (what the model computes),
`regularizer` (how the KL is weighted) or `objective` (the loss itself).
"""

import keras
import tensorflow as tf

from keras_vae import losses, priors
from keras_vae.distributions import (
    BernoulliLikelihood,
    GaussianLikelihood,
    NormalPosterior,
    standard_normal_prior,
)
from keras_vae.errors import UserError
from keras_vae.models import register_model
from keras_vae.networks import build_networks

METRIC_NAMES = ("loss", "elbo", "reconstruction_loss", "kl", "beta")


def replica_id():
    """This replica's index in its sync group (0 outside tf.distribute)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int32)
    return tf.cast(context.replica_id_in_sync_group, tf.int32)


def num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


@register_model("vae")
@keras.saving.register_keras_serializable(package="keras_vae")
class VAE(keras.Model):
    """A variational autoencoder with a diagonal-Gaussian posterior.

    Args:
        image_shape: (H, W, C) of the data.
        latent_dim: L, the size of z.
        architecture: a registered encoder/decoder design ("mlp", "conv",
            "conv-small").
        likelihood: "bernoulli" (logits) or "gaussian".
        likelihood_scale: the fixed standard deviation of a Gaussian
            likelihood; None learns one per channel.
        posterior_scale: "softplus" or "exp", how q's raw scale is made positive.
        beta: the weight of the KL term (β-VAE, Higgins et al. 2017).
        kl_warmup_steps: β rises linearly from 0 to `beta` over this many
            optimizer steps (Bowman et al. 2016; Sønderby et al. 2016).
        free_bits: a floor, in nats, on each latent dimension's batch-mean KL
            in the loss (Kingma et al. 2016). Reported `kl` and `elbo` are the
            true values.
        prior: "normal" (N(0, I)), "mog" (a learned mixture of Gaussians) or
            "vamp" (the VampPrior, Tomczak & Welling 2018).
        prior_components: mixture components / pseudo-inputs of a learned prior.
        seed: seeds the reparameterization noise.

    Call arguments:
        x: images [B, H, W, C] in [0, 1].

    Returns:
        The decoder mean [B, H, W, C] at z = E_q[z] (a tensor, never a
        distribution), so `predict` gives reconstructions.

    Example:
        >>> model = VAE(image_shape=(28, 28, 1), latent_dim=8)
        >>> model.compile(optimizer="adam")
        >>> model.fit(images, epochs=1)
    """

    def __init__(
        self,
        image_shape,
        latent_dim=16,
        architecture="mlp",
        likelihood="bernoulli",
        likelihood_scale=None,
        posterior_scale="softplus",
        beta=1.0,
        kl_warmup_steps=0,
        free_bits=0.0,
        prior="normal",
        prior_components=10,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(latent_dim, int) or latent_dim <= 0:
            raise UserError(f"latent_dim must be a positive integer. Received: latent_dim={latent_dim!r}.")
        if beta < 0:
            raise UserError(f"beta must be non-negative. Received: beta={beta!r}.")
        if prior != "normal" and self.own_prior:
            raise UserError(f"{self.own_prior}; --prior must be normal. Received: --prior {prior}.")
        self.image_shape = tuple(int(d) for d in image_shape)
        self.latent_dim = latent_dim
        self.architecture = architecture
        self.likelihood_name = likelihood
        self.likelihood_scale = likelihood_scale
        self.posterior_scale = posterior_scale
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.free_bits = float(free_bits)
        self.prior_name = prior
        self.prior_components = int(prior_components)
        self.seed = int(seed)

        self.encoder, self.decoder = self.build_networks()
        self.posterior_layer = self.build_posterior_layer()
        self.likelihood_layer = self.build_likelihood_layer()
        self.seed_generator = keras.random.SeedGenerator(seed, name="noise_seed")
        priors.add_prior_weights(self, prior, self.prior_components)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in self.metric_names()}
        self.built = True

    @classmethod
    def config_kwargs(cls, config, image_shape):
        """Constructor arguments from a `FitConfig`; variants add their own fields."""
        return dict(
            image_shape=image_shape,
            latent_dim=config.latent_dim,
            architecture=config.architecture,
            likelihood=config.likelihood,
            likelihood_scale=config.likelihood_scale,
            posterior_scale=config.posterior_scale,
            beta=config.beta,
            kl_warmup_steps=config.kl_warmup_steps or 0,  # `fit` resolves None (half the run) before this
            free_bits=config.free_bits,
            prior=config.prior,
            prior_components=config.prior_components,
            seed=config.seed,
        )

    @classmethod
    def from_fit_config(cls, config, image_shape, num_classes=0):
        """The model a `FitConfig` describes; `num_classes` matters to conditional models only."""
        return cls(**cls.config_kwargs(config, image_shape))

    # ----------------------------------------------------------- structure
    has_elbo = True  # False for the plain autoencoders: no likelihood bound to evaluate
    uses_labels = False  # True for conditional models: batches are (x, y) and y reaches the networks
    continuous_code = True  # False for a discrete code (VQ-VAE): no traversals or manifolds
    own_prior = None  # why a model takes no --prior mog/vamp (it has a prior of its own), else None

    @property
    def code_dim(self):
        """The size of the code that `encode` returns and `decode` takes (L here)."""
        return self.latent_dim

    def build_networks(self):
        """(encoder, decoder) of the chosen architecture."""
        return build_networks(self.architecture, self.image_shape, self.latent_dim, self.num_posterior_params())

    def encoder_inputs(self, x, y=None):
        """What the encoder network is called on (a conditional model adds the label)."""
        return x

    def decoder_inputs(self, z, y=None):
        """What the decoder network is called on (a conditional model adds the label)."""
        return z

    def num_posterior_params(self):
        return 2 * self.latent_dim

    def build_posterior_layer(self):
        return NormalPosterior(self.latent_dim, self.posterior_scale, name="posterior")

    def build_likelihood_layer(self):
        if self.likelihood_name == "bernoulli":
            return BernoulliLikelihood(name="likelihood")
        if self.likelihood_name == "gaussian":
            return GaussianLikelihood(self.image_shape[-1], self.likelihood_scale, name="likelihood")
        raise UserError(
            f"likelihood must be 'bernoulli' or 'gaussian'. Received: likelihood={self.likelihood_name!r}."
        )

    def metric_names(self):
        return METRIC_NAMES

    @property
    def metrics(self):
        return list(self.trackers.values())

    # ------------------------------------------------------ distributions
    def prior(self):
        """p(z)."""
        if self.prior_name == "normal":
            return standard_normal_prior(self.latent_dim)
        return priors.learned_prior(self, self.prior_name)

    def posterior(self, x, training=False, y=None):
        """q(z|x) for images x [B, H, W, C] (q(z|x, y) for a conditional model)."""
        return self.posterior_layer(self.encoder(self.encoder_inputs(x, y), training=training))

    def corrupt(self, x, training=False):
        """What the encoder sees of x; the identity here (a denoising model overrides it)."""
        return x

    def likelihood(self, z, training=False, y=None):
        """p(x|z) for codes z [B, L] (p(x|z, y) for a conditional model)."""
        return self.likelihood_layer(self.decoder(self.decoder_inputs(z, y), training=training))

    def noise_seed(self):
        """A fresh stateless seed [2], different on every replica and every call."""
        seed = self.seed_generator.next()
        return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), replica_id())

    # ------------------------------------------------------ tensor helpers
    def encode(self, x, y=None):
        """Posterior mean and standard deviation, each [B, L]."""
        return self.posterior_layer.parameters(self.encoder(self.encoder_inputs(x, y), training=False))

    def decode(self, z, y=None):
        """The decoder mean [B, H, W, C] for codes z [B, L]."""
        return self.likelihood_layer.mean(self.decoder(self.decoder_inputs(z, y), training=False))

    def reconstruct(self, x, y=None):
        """The decoder mean at the posterior mean, [B, H, W, C]."""
        mean, _ = self.encode(x, y)
        return self.decode(mean, y)

    def sample(self, num_samples, seed=0, temperature=1.0, y=None):
        """Draws from the model with stateless noise: returns (x_mean, z).

        The same `seed` gives the same images on every call. `y` (labels, or
        one label for all) is for conditional models.
        """
        seed = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
        if self.prior_name == "normal":
            z = temperature * tf.random.stateless_normal([num_samples, self.code_dim], seed=seed)
        else:
            if temperature != 1.0:
                raise UserError(f"--temperature applies to the N(0, I) prior only; this model's prior is {self.prior_name!r}.")
            z = self.prior().sample(num_samples, seed=tf.cast(seed, tf.int32))
        return self.decode(z, y), z

    def call(self, x, training=False):
        return self.reconstruct(x)

    # ---------------------------------------------------------- objective
    def compute_terms(self, x, training=False, y=None):
        """The per-example terms of the ELBO from one reparameterized sample.

        Args:
            x: images [B, H, W, C].
            training: whether the networks (and any corruption) run in training mode.
            y: labels [B] for a conditional model, else None.

        Returns:
            dict with `reconstruction_loss`, `kl` and `elbo` [B], and
            `kl_per_dim` [B, L] (None when the KL has no per-dimension form).
        """
        posterior = self.posterior(self.corrupt(x, training), training=training, y=y)
        z = posterior.sample(seed=self.noise_seed())  # (B, L), reparameterized
        reconstruction_loss = -self.likelihood(z, training=training, y=y).log_prob(x)  # (B,)
        prior = self.prior()
        kl = losses.kl_divergence(posterior, prior, z)  # (B,)
        return {
            "reconstruction_loss": reconstruction_loss,
            "kl": kl,
            "elbo": -(reconstruction_loss + kl),
            "kl_per_dim": losses.kl_per_dimension(posterior, prior),
        }

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """log p(x, z_k) - log q(z_k|x) for k = 1..num_samples, with stateless noise.

        Returns:
            (log_weights [K, B], elbo [B]): the ELBO here is the mean of the
            log-weights, an unbiased K-sample estimate.
        """
        posterior = self.posterior(x, y=y)
        z = posterior.sample(num_samples, seed=seed)  # (K, B, L)
        batch = tf.shape(z)[1]
        flat_z = tf.reshape(z, [-1, self.latent_dim])  # (K, B, L) -> (K*B, L)
        flat_x = tf.tile(x, [num_samples] + [1] * len(self.image_shape))  # (K*B, H, W, C)
        flat_y = tf.tile(y, [num_samples]) if y is not None else None  # (K*B,)
        log_likelihood = tf.reshape(self.likelihood(flat_z, y=flat_y).log_prob(flat_x), [num_samples, batch])
        log_weights = log_likelihood + self.prior().log_prob(z) - posterior.log_prob(z)  # (K, B)
        return log_weights, tf.reduce_mean(log_weights, axis=0)

    def serving_signatures(self):
        """The tf.functions exported for TF Serving (see `keras_vae.serving`)."""
        from keras_vae.serving import default_signatures

        return default_signatures(self)

    def current_beta(self):
        step = self.optimizer.iterations if self.optimizer is not None else 0
        return losses.warmup_beta(step, self.beta, self.kl_warmup_steps)

    def regularizer(self, terms, beta):
        """β times the KL term of the loss, with free bits when asked for."""
        if self.free_bits > 0:
            if terms["kl_per_dim"] is not None:
                return beta * losses.free_bits_kl(terms["kl_per_dim"], self.free_bits)
            # No per-dimension form (a Monte-Carlo KL): floor the total instead.
            return beta * tf.maximum(tf.reduce_mean(terms["kl"]), self.free_bits * self.latent_dim)
        return beta * tf.reduce_mean(terms["kl"])

    def objective(self, terms, beta):
        """The scalar loss that training minimizes (a per-example mean)."""
        return tf.reduce_mean(terms["reconstruction_loss"]) + self.regularizer(terms, beta)

    # ------------------------------------------------------ training loop
    @staticmethod
    def unpack(data):
        """(images, labels or None) from a batch given as x, (x,) or (x, y)."""
        if isinstance(data, (tuple, list)):
            return data[0], (data[1] if len(data) > 1 else None)
        return data, None

    def losses_and_terms(self, data, training):
        x, y = self.unpack(data)
        terms = self.compute_terms(x, training=training, y=y if self.uses_labels else None)
        beta = self.current_beta()
        return self.objective(terms, beta), terms, beta

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, terms, beta = self.losses_and_terms(data, training=True)
            # The optimizer sums gradients over replicas: scale so the sum is a mean.
            gradient_loss = loss / num_replicas()
            gradient_loss = self.optimizer.scale_loss(gradient_loss)
        gradients = tape.gradient(gradient_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self.update_trackers(loss, terms, beta)

    def test_step(self, data):
        loss, terms, beta = self.losses_and_terms(data, training=False)
        return self.update_trackers(loss, terms, beta)

    def update_trackers(self, loss, terms, beta):
        # Scalars are weighted by the batch size so that every tracker is a per-example mean.
        batch_size = tf.cast(tf.shape(terms["elbo"])[0], tf.float32)
        scalars = {"loss": loss, "beta": beta}
        for name, tracker in self.trackers.items():
            if name in scalars:
                tracker.update_state(scalars[name], sample_weight=batch_size)
            else:
                tracker.update_state(terms[name])
        results = {name: tracker.result() for name, tracker in self.trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras reduces step outputs with strategy.reduce("MEAN", v, axis=0)
            # under multi-worker training, which fails on scalars: send [1].
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    # -------------------------------------------------------- saving
    def get_config(self):
        config = super().get_config()
        config.update(
            image_shape=list(self.image_shape),
            latent_dim=self.latent_dim,
            architecture=self.architecture,
            likelihood=self.likelihood_name,
            likelihood_scale=self.likelihood_scale,
            posterior_scale=self.posterior_scale,
            beta=self.beta,
            kl_warmup_steps=self.kl_warmup_steps,
            free_bits=self.free_bits,
            prior=self.prior_name,
            prior_components=self.prior_components,
            seed=self.seed,
        )
        return config
