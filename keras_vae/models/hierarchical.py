"""A two-stochastic-layer hierarchical VAE with ladder (top-down) inference.

Generative model, top down:   p(z2) = N(0, I),  p(z1 | z2) = N(μp(z2), σp(z2)²),  p(x | z1).
Inference, LVAE-style (Sønderby et al. 2016): a bottom-up pass computes
q(z2 | x) and a bottom-up estimate N(μ̂1, σ̂1²) for z1; the top-down pass
draws z2, computes the prior p(z1 | z2) and combines the two by precision
weighting:

    σq⁻² = σ̂1⁻² + σp⁻²,    μq = (μ̂1 σ̂1⁻² + μp σp⁻²) σq²,    q(z1 | x, z2) = N(μq, σq²).

ELBO = E_q[log p(x | z1)] − KL(q(z1 | x, z2) ‖ p(z1 | z2)) − KL(q(z2 | x) ‖ p(z2)), with
both KL terms analytic (the first at the sampled z2), each logged (`kl_z1`,
`kl_z2`) and their sum as `kl`.

The code. `encode`/`decode` use the whitened code c = [ε1, z2] (2L numbers),
z1 = μp(z2) + σp(z2) ε1, whose prior is exactly N(0, I): `sample` draws c ~
N(0, I), which is ancestral top-down sampling, and traversals, interpolation
and the manifold work on it like on a flat VAE's code. KL per dimension is
invariant under that affine map, so `kl_per_dim` lines up with c.

References:
    Sønderby et al. (2016). Ladder Variational Autoencoders. NeurIPS.
    Vahdat & Kautz (2020). NVAE: A Deep Hierarchical Variational Autoencoder. NeurIPS.
"""

import keras
import tensorflow as tf

from keras_vae import losses
from keras_vae.distributions import diagonal_normal, split_seeds, standard_normal_prior
from keras_vae.models import register_model
from keras_vae.models.base import elbo_terms
from keras_vae.models.vae import VAE
from keras_vae.networks import build_networks

HIDDEN = 256  # width of the small ladder networks and of the encoder's feature output


def precision_weighted(loc_a, scale_a, loc_b, scale_b):
    """The normalized product of two Gaussians N(loc_a, scale_a²)·N(loc_b, scale_b²): (loc, scale)."""
    precision_a, precision_b = tf.math.reciprocal(tf.square(scale_a)), tf.math.reciprocal(tf.square(scale_b))
    variance = tf.math.reciprocal(precision_a + precision_b)
    return (loc_a * precision_a + loc_b * precision_b) * variance, tf.sqrt(variance)


@register_model("hvae")
@keras.saving.register_keras_serializable(package="keras_vae")
class HierarchicalVAE(VAE):
    """A two-layer hierarchical VAE, z2 → z1 → x, with LVAE's precision-weighted top-down inference.

    Both layers have `latent_dim` dimensions; the code of `encode`/`decode`
    is the whitened [ε1, z2] (2 × latent_dim), whose prior is N(0, I).
    """

    unused_hyperparameters = ("prior", "prior_components", "prior_refit", "dequantize")  # its prior is the hierarchy

    def __init__(self, image_shape, **kwargs):
        super().__init__(image_shape, **kwargs)
        latent = self.latent_dim
        # Bottom-up: the encoder's features -> the estimate for z1, and (one layer deeper) q(z2|x).
        self.bottom_up_z1 = keras.layers.Dense(2 * latent, name="bottom_up_z1")
        self.bottom_up_z2 = keras.Sequential(
            [keras.Input((HIDDEN,)), keras.layers.Dense(HIDDEN, activation="relu"), keras.layers.Dense(2 * latent)],
            name="bottom_up_z2")
        # Top-down: z2 -> p(z1|z2).
        self.top_down = keras.Sequential(
            [keras.Input((latent,)), keras.layers.Dense(HIDDEN, activation="relu"), keras.layers.Dense(2 * latent)],
            name="top_down")
        self.bottom_up_z1.build((None, HIDDEN))

    @property
    def code_dim(self):
        return 2 * self.latent_dim

    def code_groups(self):
        return [("z1 (as ε1)", self.latent_dim), ("z2", self.latent_dim)]

    def generation_order(self):
        return [1, 0]  # z2, then ε1 (z1 drawn given z2)

    def inference_layers(self):
        return [self.encoder, self.bottom_up_z1, self.bottom_up_z2]  # top_down is p(z1|z2), generative

    def build_networks(self):
        # The encoder ends in HIDDEN features, not posterior parameters; the decoder reads z1.
        return build_networks(self.architecture, self.image_shape, self.latent_dim, HIDDEN, self.decoder_channels())

    def metric_names(self):
        return super().metric_names() + ("kl_z1", "kl_z2")

    # ------------------------------------------------------------ the ladder
    def _gaussian(self, raw):
        return self.posterior_layer.parameters(raw)  # (loc, scale) in float32, scale > 0

    def bottom_up(self, x, training=False):
        """(z1 estimate (loc, scale), q(z2|x) (loc, scale)) from one encoder pass."""
        features = tf.nn.relu(self.encoder(x, training=training))
        return self._gaussian(self.bottom_up_z1(features)), self._gaussian(self.bottom_up_z2(features))

    def top_down_prior(self, z2):
        """(loc, scale) of p(z1 | z2), for z2 [..., L]."""
        shape = tf.shape(z2)
        loc, scale = self._gaussian(self.top_down(tf.reshape(z2, [-1, self.latent_dim])))
        return tf.reshape(loc, shape), tf.reshape(scale, shape)

    def ladder(self, x, z2_sampler, training=False):
        """Samples the posterior top down: returns (q2, z2, p1, q1) with z2 from `z2_sampler(q2)`."""
        (estimate_loc, estimate_scale), (loc2, scale2) = self.bottom_up(x, training)
        q2 = diagonal_normal(loc2, scale2)
        z2 = z2_sampler(q2)  # (..., B, L)
        prior_loc, prior_scale = self.top_down_prior(z2)
        p1 = diagonal_normal(prior_loc, prior_scale)
        q1 = diagonal_normal(*precision_weighted(estimate_loc, estimate_scale, prior_loc, prior_scale))
        return q2, z2, p1, q1

    def likelihood_of(self, z1, training=False):
        """p(x | z1) for z1 [N, L]."""
        return self.likelihood_layer(self.decoder(z1, training=training), training=training)

    # ---------------------------------------------------------- objective
    def compute_terms(self, x, training=False, y=None):
        seeds = split_seeds(self.noise_seed())
        q2, z2, p1, q1 = self.ladder(self.corrupt(x, training), lambda q: q.sample(seed=seeds[0]), training)
        z1 = q1.sample(seed=seeds[1])
        reconstruction_loss = -self.likelihood_of(z1, training).log_prob(x)  # (B,)
        top_prior = standard_normal_prior(self.latent_dim)
        kl_z1 = losses.kl_divergence(q1, p1)  # (B,), analytic at the sampled z2
        kl_z2 = losses.kl_divergence(q2, top_prior)  # (B,)
        # kl_per_dim [B, 2L] is in the order of the code [ε1, z2].
        return elbo_terms(reconstruction_loss, kl_z1 + kl_z2,
                          tf.concat([losses.kl_per_dimension(q1, p1), losses.kl_per_dimension(q2, top_prior)], -1),
                          kl_z1=kl_z1, kl_z2=kl_z2)

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """log p(x, z1, z2) − log q(z1, z2 | x) for K top-down posterior samples: ([K, B], elbo [B])."""
        seeds = split_seeds(seed)
        q2, z2, p1, q1 = self.ladder(x, lambda q: q.sample(num_samples, seed=seeds[0]))  # z2: (K, B, L)
        z1 = q1.sample(seed=seeds[1])  # (K, B, L): q1's batch is already (K, B)
        batch = tf.shape(x)[0]
        flat_x = tf.tile(x, [num_samples] + [1] * len(self.image_shape))  # (K*B, H, W, C)
        log_likelihood = tf.reshape(
            self.likelihood_of(tf.reshape(z1, [-1, self.latent_dim])).log_prob(flat_x), [num_samples, batch])
        log_weights = (log_likelihood + p1.log_prob(z1) + standard_normal_prior(self.latent_dim).log_prob(z2)
                       - q1.log_prob(z1) - q2.log_prob(z2))
        return log_weights, tf.reduce_mean(log_weights, axis=0)

    # ------------------------------------------------- the whitened code
    def encode(self, x, y=None):
        """Means and standard deviations [B, 2L] of the code [ε1, z2], at z2 = E_q[z2]."""
        (estimate_loc, estimate_scale), (loc2, scale2) = self.bottom_up(x)
        prior_loc, prior_scale = self.top_down_prior(loc2)
        loc1, scale1 = precision_weighted(estimate_loc, estimate_scale, prior_loc, prior_scale)
        return (tf.concat([(loc1 - prior_loc) / prior_scale, loc2], -1),
                tf.concat([scale1 / prior_scale, scale2], -1))

    def posterior(self, x, training=False, y=None):
        """The Gaussian over the whitened code [ε1, z2] that `encode` summarizes."""
        return diagonal_normal(*self.encode(x))

    def decoder_inputs(self, code, y=None):
        """z1 = μp(z2) + σp(z2) ε1 for the code [ε1, z2]."""
        epsilon, z2 = tf.split(tf.cast(code, tf.float32), 2, axis=-1)
        prior_loc, prior_scale = self.top_down_prior(z2)
        return prior_loc + prior_scale * epsilon
