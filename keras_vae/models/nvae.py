"""NVAE: a deep hierarchical VAE of spatial latent maps at several scales (Vahdat & Kautz 2020).

Generative model, top down: a learned constant feature map h at the coarsest
scale; for each group l = 1..G (coarse scales first, `groups_per_scale` groups
per scale), the prior p(z_l | z_<l) = N(μp(h), σp(h)²) over a map of
`latent_channels` channels (N(0, I) for the first group), then h ← cells(h
combined with z_l), upsampling between scales; after the last group a
postprocessing stack up to the image's resolution and p(x | z).

Inference shares the top-down path: a bottom-up encoder makes one feature map
per group, and q(z_l | z_<l, x) is a residual Normal relative to the prior,

    q = N(μp + Δμ, (σp · exp Δlog σ)²),    Δμ, Δlog σ = head(bottom-up features, h),

so that the KL of each group, analytic through `tfd.kl_divergence`, depends on
the change that the data asks for. Cells are residual: the encoder's
BN–Swish–Conv3×3–BN–Swish–Conv3×3–SE, the decoder's 1×1 expansion, BN, Swish,
depthwise 5×5, BN, Swish, 1×1, BN, SE (both scaled by 0.1 on the residual
branch). Stabilizers: spectral regularization of every convolution (one power
iteration per step, the estimates kept as state), a penalty on batch-norm
scales, a KL warm-up over `kl_warmup_steps` with KL balancing across groups
during it, and Adamax with a cosine schedule as the run's default optimizer.
After the warm-up, `group_free_bits` can floor each group's KL in the loss
(free bits per group), against groups that collapse late in training.
Images whose sides are not divisible by the hierarchy's total stride are
padded (bottom and right) and the padding cropped before p(x | z). For
ablations, the SE gates (`squeeze_excite`), the residual posterior
(`residual_posterior`), KL balancing (`kl_balance`) and the norm penalties
(`spectral_reg` 0) can each be switched off. Each head's mean and log-scale
are soft-clamped to ±5 before the posterior's offsets are added to the
prior's; `clamp_sums` clamps the sums instead and floors every σ at 0.01, as
the official code does. `weight_norm` weight-normalizes every convolution as the
official code does (Salimans & Kingma 2016: a learned norm per output
channel), the spectral penalty then taken on the normalized kernels.

The code. `encode`/`decode` use the whitened code ε (ε_l = (z_l − μp)/σp for
every group, flattened top group first), whose prior is exactly N(0, I):
`sample` draws ε ~ N(0, T² I), which is NVAE's temperature sampling, and
traversals and interpolation work on it as on a flat VAE's code; KL per
dimension is invariant under that map, so `kl_per_dim` lines up with ε.

A mixture prior trained with the model (`top_prior` mog): the N(0, I) prior of
the top `top_prior_groups` groups' ε is replaced by a mixture of
`top_prior_components` diagonal Gaussians, p(ε_top) = Σ_k π_k N(μ_k, diag σ_k²),
learned by the ELBO together with everything else, so that the encoder and
the prior meet (the hole between the aggregate posterior and N(0, I) that a
prior fitted after training leaves; cf. LSGM, Vahdat et al. 2021, which
trains a score-based prior there). The block's KL has no closed form: the
ELBO's `kl` is Σ_l KL_l − (log p(ε_top) − log N(ε_top; 0, I)) at the
posterior's draw (the whitening is a bijection given the groups above, so the
priors' log-ratio over z is that over ε), and KL balancing and free bits
treat the block as one unit whose KL is that Monte-Carlo estimate (weighting
its analytic parts apart would let a negative remainder be weighted up
without bound). Each group's `kl_l` and `kl_per_dim` stay analytic, against
the group's Gaussian prior. `sample` draws ε_top from the mixture.

An exemplar prior trained with the model (`top_prior` exemplar; Norouzi et al.
2020): the mixture's components are instead the block's whitened posterior
means c_m of the last `top_prior_components` training images, with equal
weights and one learned bandwidth s per dimension, p(ε_top) = (1/M) Σ_m
N(c_m, diag s²). Each training step scores its batch against the codes stored
before it, then stores the batch's means (the global batch's, gathered from
every replica) in place of the oldest. So the encoder is rewarded for codes
that lie near other images', and an image's own code is its component only
when it comes round again before M other images have (across an epoch's
reshuffle, about (M/N)²/2 of N training images an epoch; keep M well below
N: Exemplar VAE leaves each image's own exemplar out). The memory starts at
zeros with s = 1, i.e. at N(0, I); the codes are those of training mode (batch
statistics) at the posterior's draw of the groups above. Everything else is as
for mog: the block is one KL unit, and `sample` draws a stored code plus
s·T·noise.

An autoregressive prior trained with the model (`top_prior` autoregressive;
PixelVAE, Gulrajani et al. 2017): the top groups' whitened maps are drawn
one after the other, each position given the positions before it in raster
order and the maps above, from a mixture of `top_prior_components` diagonal
Gaussians over its channels that a gated PixelCNN of `top_prior_filters`
channels makes (`keras_vae.spatial_prior`). The Gaussian priors draw every
position of a group independently given the groups above, so the outline of
a shape that a group holds has to come from the groups above; here its
positions can depend on one another. Its density is exact; its KL is taken
by Monte Carlo and the block is one KL unit, as for mog; with
`top_prior_per_group` each group is its own unit instead, its analytic KL
against its Gaussian prior less log p(ε_g | ε_<g) − log N(ε_g; 0, I) at
the draw (the density factorizes over the groups, so each unit estimates
that group's KL given the groups above). `sample` draws position by
position (one network pass each).

A contrastive prior (`keras-vae fit-prior --method contrastive`, after
training): the trained prior of the top `contrastive_groups` groups' ε (N(0, I),
or a learned top prior, whose block it must then cover) is reweighted by a
classifier of their aggregate posterior against it,
p(ε_top) = p_top(ε_top) r(ε_top) / Z (`keras_vae.contrastive_prior`, Aneja et
al. 2021). `sample` then draws ε_top by sampling-importance-resampling over
p_top's draws, and the likelihoods (`score`, nll_iw, the ELBO) add
log r − log Z at the posterior's draw: the ELBO's `kl` is then
Σ_l KL_l − (log p_top − log N(0, I)) − (log r − log Z), one-sample, while each
group's `kl_l` stays its analytic KL against its Gaussian prior.

References:
    Vahdat & Kautz (2020). NVAE: A Deep Hierarchical Variational Autoencoder. NeurIPS.
    Sønderby et al. (2016). Ladder Variational Autoencoders. NeurIPS: KL warm-up, top-down inference.
    Yoshida & Miyato (2017). Spectral Norm Regularization. arXiv:1705.10941.
    Hu et al. (2018). Squeeze-and-Excitation Networks. CVPR.
    Salimans & Kingma (2016). Weight Normalization. NeurIPS.
    Salimans et al. (2017). PixelCNN++: the discretized logistic mixture (`--likelihood logistic_mixture`).
    Aneja et al. (2021). A Contrastive Learning Approach for Training VAE Priors (NCP-VAE). NeurIPS.
    Vahdat, Kreis & Kautz (2021). Score-based Generative Modeling in Latent Space (LSGM). NeurIPS: a prior
        trained with the VAE, against the prior hole.
    Tomczak & Welling (2018). VAE with a VampPrior. AISTATS: a learned mixture prior, its KL by Monte Carlo.
    Norouzi, Fleet & Norouzi (2020). Exemplar VAE. NeurIPS: a prior made of training examples' codes.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_vae import contrastive_prior, losses, priors, spatial_prior
from keras_vae.distribute import global_batch_mean
from keras_vae.errors import UserError
from keras_vae.hparams import Hyperparameter as H
from keras_vae.metrics import mixture_log_joint
from keras_vae.models import register_model
from keras_vae.distributions import diagonal_normal, split_seeds, standard_normal_prior
from keras_vae.models.base import elbo_terms, rebuilt
from keras_vae.models.vae import VAE
from keras_vae.networks import convolution

RESIDUAL_SCALE = 0.1  # the residual branch's weight in every cell
EXPANSION = 6  # the decoder cell's 1×1 expansion
SE_RATIO, SE_MIN = 16, 4  # squeeze-and-excitation bottleneck: channels / 16, at least 4
BN_MOMENTUM = 0.95
HEAD_INIT = keras.initializers.RandomNormal(stddev=1e-3)
SCALE_FLOOR = 0.01  # every group's σ is at least this with `clamp_sums`, as in the official code
WEIGHT_NORM_EPSILON = 1e-5  # added to a kernel's norm before dividing by it (`weight_norm`, as in the official code)
WEIGHT_NORM_OFFSET = 0.01  # added to a kernel's initial norm before its log starts the learned log-norm (ditto)
BALANCE_FLOOR = 0.01  # nats added to each group's batch-mean KL before balancing
INITIAL_POWER_ITERATIONS = 40  # at build; then one per training step
READJUST_BATCHES = 20  # forward passes of the prior's samples that readjust the batch-norm statistics
TOP_PRIORS = ("normal", "mog", "exemplar", "autoregressive")
# --top-prior-components when not given: a mixture's components, an exemplar memory's codes, Gaussians per position.
TOP_PRIOR_COMPONENTS = {"normal": 100, "mog": 100, "exemplar": 4096, "autoregressive": 10}
# The learned mixture's means start at N(0, 0.3²) per dimension: near N(0, I), so training starts close to the
# standard prior, yet far enough apart over hundreds of dimensions that each code has one likeliest component.
TOP_PRIOR_LOC_SPREAD = 0.3


# ------------------------------------------------------------------ pure functions
def soft_clamp(x, bound=5.0):
    """bound · tanh(x / bound): a smooth clip for means and log-scales."""
    return bound * tf.tanh(x / bound)


def residual_normal(prior_loc, prior_scale, delta_loc, delta_log_scale):
    """(loc, scale) of q = N(μp + Δμ, (σp · exp Δlog σ)²): the posterior relative to the prior."""
    return prior_loc + delta_loc, prior_scale * tf.exp(delta_log_scale)


def clamped_normal(loc, log_scale, floor=0.0):
    """(loc, scale) of N(5 tanh(μ/5), (exp(5 tanh(log σ/5)) + floor)²): a head's raw mean and log-scale made
    safe. The official NVAE clamps sums this way (the prior's raw parameters plus the posterior's offsets) with
    a floor of SCALE_FLOOR."""
    return soft_clamp(loc), tf.exp(soft_clamp(log_scale)) + floor


def spectral_norm_estimate(matrix, u, iterations=1):
    """(σ, new u): the largest singular value of `matrix` [m, n] by power iteration from u [m].

    The vectors are held constant, so that σ = uᵀ W v has the gradient u vᵀ of the true largest singular
    value once u and v have converged (Yoshida & Miyato 2017).
    """
    matrix = tf.cast(matrix, tf.float32)
    u = tf.stop_gradient(u)
    for _ in range(iterations):
        v = tf.math.l2_normalize(tf.linalg.matvec(matrix, u, transpose_a=True))
        u = tf.math.l2_normalize(tf.linalg.matvec(matrix, v))
    v = tf.stop_gradient(tf.math.l2_normalize(tf.linalg.matvec(matrix, u, transpose_a=True)))
    u = tf.stop_gradient(u)
    return tf.tensordot(u, tf.linalg.matvec(matrix, v), 1), u


def weight_normalized(kernel, log_norm, axes):
    """exp(log_norm) · v / (‖v‖ + 1e-5), the norm of the kernel v over `axes` (all but its output channel's):
    weight normalization (Salimans & Kingma 2016) as the official NVAE writes it, in float32. `log_norm` holds
    one value per output channel (per channel of a depthwise kernel [kh, kw, C, 1])."""
    kernel, norm = tf.cast(kernel, tf.float32), kernel_norm(kernel, axes)
    return tf.reshape(tf.exp(tf.cast(log_norm, tf.float32)), tf.shape(norm)) * kernel / (norm + WEIGHT_NORM_EPSILON)


def kernel_norm(kernel, axes):
    """‖v‖ over `axes` of a kernel, kept as size-1 axes, in float32."""
    kernel = tf.cast(kernel, tf.float32)
    return tf.sqrt(tf.reduce_sum(tf.square(kernel), axes, keepdims=True))


def kernel_matrix(layer):
    """A convolution's kernel [kh, kw, in, out] as the matrix [kh·kw·in, out]; a depthwise one's [kh, kw, C, 1]
    as [kh·kw, C] (one column per channel), as NVAE reshapes its weights; a weight-normalized layer's
    effective kernel (the official code's spectral norms are of its normalized weights)."""
    kernel = layer.effective_kernel() if hasattr(layer, "effective_kernel") else layer.kernel
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return tf.reshape(kernel, [-1, kernel.shape[2] * kernel.shape[3]])
    return tf.reshape(kernel, [-1, kernel.shape[-1]])


def balanced_kl(kl_groups, group_sizes, warming_up):
    """The KL term with NVAE's balancing: Σ_l γ_l KL_l per example [B].

    While `warming_up`, γ_l ∝ (batch-mean KL_l + 0.01) / α_l with α_l ∝ the group's number of latent
    variables, normalized to mean 1 and held constant (no gradient): groups that use more than their
    share of the KL are pushed harder towards their prior, and few groups cannot carry the whole code.
    Under tf.distribute the batch mean is the global batch's (sums and counts all-reduced), so every
    replica weighs the groups alike. Afterwards γ_l = 1, the true KL.

    Args:
        kl_groups: [B, G] nats.
        group_sizes: [G] latent variables per group.
        warming_up: a boolean scalar, or False (no balancing at all: no all-reduce either).
    """
    if warming_up is False:
        return tf.reduce_sum(kl_groups, -1)
    alpha = tf.constant(group_sizes, tf.float32) / float(min(group_sizes))
    gamma = (global_batch_mean(tf.abs(kl_groups)) + BALANCE_FLOOR) / alpha
    gamma = tf.stop_gradient(gamma / tf.reduce_mean(gamma))
    gamma = tf.where(warming_up, gamma, tf.ones_like(gamma))
    return tf.reduce_sum(kl_groups * gamma, -1)


# ------------------------------------------------------------------ layers
def batch_norm():
    """Batch norm with NVAE's momentum, its statistics synchronized across replicas when there are several."""
    synchronized = tf.distribute.get_strategy().num_replicas_in_sync > 1
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=synchronized)


class WeightNormalized:
    """What the weight-normalized convolutions share: the learned log-norm, built after the kernel, and the
    effective kernel, formed in float32 (the layer reads its variables uncast: `autocast` off) and cast to the
    compute dtype with the inputs, so that the norms of small kernels stay exact under mixed precision."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "autocast": False})

    def build(self, input_shape):
        super().build(input_shape)
        self.log_norm = add_log_norm(self)

    def effective_kernel(self):
        return weight_normalized(self.kernel, self.log_norm, self.norm_axes)


@keras.saving.register_keras_serializable(package="keras_vae")
class WeightNormConv2D(WeightNormalized, keras.layers.Conv2D):
    """A convolution whose kernel is `weight_normalized` (its log-norm per output channel learned, starting at
    the log of the initial kernel's norm plus 0.01, as in the official NVAE)."""

    norm_axes = (0, 1, 2)  # of the kernel [kh, kw, in, out]: all but the output channel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.use_bias or self.groups != 1:
            raise ValueError("WeightNormConv2D has no bias (NVAE adds it apart) and one group.")

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(tf.cast(inputs, self.compute_dtype),
                                      tf.cast(weight_normalized(kernel, self.log_norm, self.norm_axes),
                                              self.compute_dtype))

    # Every variable, the log-norm too (Conv2D's own methods save only the kernel and the bias).
    save_own_variables = keras.layers.Layer.save_own_variables
    load_own_variables = keras.layers.Layer.load_own_variables


@keras.saving.register_keras_serializable(package="keras_vae")
class WeightNormDepthwiseConv2D(WeightNormalized, keras.layers.DepthwiseConv2D):
    """A bias-free depthwise convolution whose kernel [kh, kw, C, 1] is `weight_normalized` per channel."""

    norm_axes = (0, 1, 3)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.use_bias or self.activation is not keras.activations.linear or self.depth_multiplier != 1:
            raise ValueError("WeightNormDepthwiseConv2D has neither a bias nor an activation, and one output "
                             "channel per input channel.")

    def call(self, inputs):
        kernel = tf.cast(self.effective_kernel(), self.compute_dtype)
        return keras.ops.depthwise_conv(tf.cast(inputs, self.compute_dtype), kernel, strides=self.strides,
                                        padding=self.padding, dilation_rate=self.dilation_rate,
                                        data_format=self.data_format)


def add_log_norm(layer):
    """The learned log-norm of a weight-normalized layer's kernel, one per output channel, at the log of the
    initial kernel's norm plus WEIGHT_NORM_OFFSET (in float32, whatever the autocast scope it is built in)."""
    def initial(shape, dtype=None):
        norm = kernel_norm(layer.kernel, layer.norm_axes)
        return tf.cast(tf.reshape(tf.math.log(norm + WEIGHT_NORM_OFFSET), shape), dtype or tf.float32)

    shape = [n for i, n in enumerate(layer.kernel.shape) if i not in layer.norm_axes]
    return layer.add_weight(shape=shape, initializer=initial, name="log_norm")


class SqueezeExcite(keras.layers.Layer):
    """x · σ(W₂ relu(W₁ mean_hw(x))): a per-channel gate from the feature map's global average."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.squeeze = keras.layers.Dense(max(channels // SE_RATIO, SE_MIN), activation="relu")
        self.excite = keras.layers.Dense(channels, activation="sigmoid")

    def call(self, x):
        gate = self.excite(self.squeeze(tf.reduce_mean(x, axis=[1, 2])))
        return x * gate[:, None, None, :]


class ResidualCell(keras.layers.Layer):
    """x + 0.1 · branch(x), the branch a list of layers (batch norms told whether training)."""

    def __init__(self, branch, **kwargs):
        super().__init__(**kwargs)
        self.branch = branch

    def call(self, x, training=False):
        h = x
        for layer in self.branch:
            h = layer(h, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(h)
        return x + RESIDUAL_SCALE * h


def encoder_cell(channels, plan):
    """BN–Swish–Conv3×3–BN–Swish–Conv3×3–SE, residual (without the SE when not `plan.squeeze_excite`)."""
    return ResidualCell([batch_norm(), keras.layers.Activation("swish"), plan.conv(channels, bias=False),
                         batch_norm(), keras.layers.Activation("swish"), plan.conv(channels)]
                        + [SqueezeExcite(channels)] * plan.squeeze_excite)


def decoder_cell(channels, plan):
    """BN–1×1 expansion–BN–Swish–depthwise 5×5–BN–Swish–1×1–BN–SE, residual (without the SE when not
    `plan.squeeze_excite`)."""
    return ResidualCell([batch_norm(), plan.conv(EXPANSION * channels, 1, bias=False), batch_norm(),
                         keras.layers.Activation("swish"), plan.depthwise(5), batch_norm(),
                         keras.layers.Activation("swish"), plan.conv(channels, 1, bias=False), batch_norm()]
                        + [SqueezeExcite(channels)] * plan.squeeze_excite)


class Resample(keras.layers.Layer):
    """Halves (stride-2 3×3 convolution) or doubles (nearest neighbour, then 1×1) the resolution."""

    def __init__(self, channels, up, plan, **kwargs):
        super().__init__(**kwargs)
        self.up = up
        self.conv = plan.conv(channels, 1) if up else plan.conv(channels, 3, strides=2)

    def call(self, x):
        return self.conv(tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2) if self.up else x)


def run_cells(cells, h, training):
    for cell in cells:
        h = cell(h, training=training)
    return h


class BottomUp(keras.layers.Layer):
    """The encoder: x [B, H, W, C] in [0, 1] -> one feature map per latent group, in top-down order."""

    def __init__(self, plan, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        c = plan.channels
        self.stem = plan.conv(c // 4)
        self.preprocess = [encoder_cell(c // 4, plan), Resample(c // 2, False, plan), encoder_cell(c // 2, plan),
                           Resample(c, False, plan)]
        self.cells = [[[encoder_cell(plan.scale_channels(s), plan) for _ in range(plan.cells_per_group)]
                       for _ in range(plan.groups_per_scale)] for s in range(plan.scales)]
        self.downs = [Resample(plan.scale_channels(s + 1), False, plan) for s in range(plan.scales - 1)]

    def call(self, x, training=False):
        h = self.stem(2.0 * self.plan.pad(x) - 1.0)
        h = run_cells(self.preprocess, h, training)
        features = []
        for s, groups in enumerate(self.cells):  # finest scale first
            for cells in groups:
                h = run_cells(cells, h, training)
                features.append(h)
            if s < len(self.downs):
                h = self.downs[s](h)
        return features[::-1]


class TopDown(keras.layers.Layer):
    """The decoder's top-down path, shared by generation and inference (see the module docstring).

    `run(batch, choose, features)` walks the groups; at group l it calls `choose(l, prior, posterior)`
    with the prior's (loc, scale) and, given bottom-up `features`, the posterior's (None otherwise),
    and continues with the z_l it returns. It returns the likelihood's parameters [B, H, W, ·].
    Called on a whitened code [B, code_dim], it decodes z_l = μp + σp ε_l.
    """

    def __init__(self, plan, output_channels, **kwargs):
        super().__init__(autocast=False, **kwargs)  # the code stays float32 until z = μp + σp ε is formed
        self.plan = plan
        top = plan.scales - 1
        self.constant = self.add_weight(shape=(*plan.group_shape(0)[:2], plan.scale_channels(top)),
                                        initializer=keras.initializers.RandomNormal(stddev=1.0), name="constant")
        groups = range(plan.num_groups)
        latent = plan.latent_channels
        # Group 0's prior is N(0, I): no head.
        # Heads start near 0 (each posterior at its prior, each prior near N(0, I)), so that the first steps'
        # KL is small rather than blown up by the soft-clamped log-scales. (Weight-normalized, a head's norm starts
        # at its kernel's plus 0.01, as in the official code: 1.3-1.8× larger than HEAD_INIT's, still small.)
        self.prior_heads = [None] + [plan.conv(2 * latent, initializer=HEAD_INIT) for _ in groups[1:]]
        self.posterior_heads = [plan.conv(2 * latent, initializer=HEAD_INIT) for _ in groups]
        self.combiners = [plan.conv(plan.scale_channels(plan.scale_of(g)), 1) for g in groups]
        self.cells = [[decoder_cell(plan.scale_channels(plan.scale_of(g)), plan)
                       for _ in range(plan.cells_per_group)] for g in groups]
        self.ups = [Resample(plan.scale_channels(s), True, plan) for s in range(top)]  # to scale s
        c = plan.channels
        self.postprocess = [Resample(c // 2, True, plan), decoder_cell(c // 2, plan), Resample(c // 4, True, plan),
                            decoder_cell(c // 4, plan), keras.layers.Activation("elu"), plan.conv(output_channels)]

    def gaussian(self, head, h):
        """(loc, log-scale) [B, h, w, latent] in float32 from a head's output, not yet clamped."""
        return tf.split(tf.cast(head(h), tf.float32), 2, axis=-1)

    def posterior(self, prior_raw, delta_loc, delta_log_scale):
        """q's (loc, scale) from the prior's raw (loc, log-scale) and the posterior head's raw output: with
        `clamp_sums` the official code's way (the sums clamped, σ floored), otherwise each part clamped alone
        (the residual posterior then reaches log σ = ±10 and has no floor)."""
        if not self.plan.residual_posterior:
            return clamped_normal(delta_loc, delta_log_scale, self.plan.scale_floor)
        if self.plan.clamp_sums:
            return clamped_normal(prior_raw[0] + delta_loc, prior_raw[1] + delta_log_scale, self.plan.scale_floor)
        return residual_normal(*clamped_normal(*prior_raw), soft_clamp(delta_loc), soft_clamp(delta_log_scale))

    def run(self, batch, choose, features=None, training=False):
        h = tf.tile(tf.cast(self.constant[None], self.compute_dtype), [batch, 1, 1, 1])
        for g in range(self.plan.num_groups):
            scale = self.plan.scale_of(g)
            if g > 0 and scale != self.plan.scale_of(g - 1):
                h = self.ups[scale](h)
            if g == 0:  # N(0, I) exactly, floor or not: the whitened code's top prior
                shape = tf.concat([[batch], self.plan.group_shape(0)], 0)
                prior_raw = (tf.zeros(shape), tf.zeros(shape))
                prior = (tf.zeros(shape), tf.ones(shape))
            else:
                prior_raw = self.gaussian(self.prior_heads[g], h)
                prior = clamped_normal(*prior_raw, self.plan.scale_floor)
            posterior = None
            if features is not None:
                posterior = self.posterior(prior_raw, *self.gaussian(self.posterior_heads[g],
                                                                     tf.concat([features[g], h], -1)))
            z = choose(g, prior, posterior)
            h = self.combiners[g](tf.concat([h, tf.cast(z, h.dtype)], -1))
            h = run_cells(self.cells[g], h, training)
        for layer in self.postprocess:
            h = layer(h, training=training) if isinstance(layer, ResidualCell) else layer(h)
        return self.plan.crop(h)

    def call(self, code, training=False):
        epsilons = self.plan.split_code(tf.cast(code, tf.float32))
        return self.run(tf.shape(code)[0], lambda g, prior, _: prior[0] + prior[1] * epsilons[g],
                        training=training)


class Plan:
    """The hierarchy's design: scales, groups, channels, the switchable parts (squeeze-and-excitation, the
    residual posterior, the clamping, weight normalization), its convolutions, padding, and the whitened code's
    layout."""

    def __init__(self, image_shape, scales, groups_per_scale, latent_channels, channels, cells_per_group,
                 squeeze_excite=True, residual_posterior=True, clamp_sums=False, weight_norm=False):
        self.image_shape = tuple(image_shape)
        self.scales, self.groups_per_scale = scales, groups_per_scale
        self.latent_channels, self.channels, self.cells_per_group = latent_channels, channels, cells_per_group
        self.squeeze_excite, self.residual_posterior = squeeze_excite, residual_posterior
        self.clamp_sums, self.weight_norm = clamp_sums, weight_norm
        self.scale_floor = SCALE_FLOOR if clamp_sums else 0.0
        stride = 2 ** (scales + 1)  # two preprocessing halvings, then one between scales
        self.padded = tuple(-(-side // stride) * stride for side in self.image_shape[:2])
        self.num_groups = scales * groups_per_scale

    def conv(self, filters, kernel_size=3, strides=1, bias=True, initializer="glorot_uniform"):
        """A convolution, weight-normalized with `weight_norm`; with `bias`, its bias is a float32 `BiasAdd`
        (right gradients under bfloat16)."""
        layer = WeightNormConv2D if self.weight_norm else keras.layers.Conv2D
        if bias:
            return keras.Sequential(convolution(layer, filters, kernel_size, strides, kernel_initializer=initializer))
        return layer(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                     kernel_initializer=initializer)

    def depthwise(self, kernel_size):
        """A bias-free depthwise convolution, weight-normalized with `weight_norm`."""
        layer = WeightNormDepthwiseConv2D if self.weight_norm else keras.layers.DepthwiseConv2D
        return layer(kernel_size, padding="same", use_bias=False)

    def scale_channels(self, scale):
        return self.channels * 2 ** scale

    def scale_of(self, group):
        """The scale of top-down group `group` (scale 0 is the finest)."""
        return self.scales - 1 - group // self.groups_per_scale

    def group_shape(self, group):
        factor = 4 * 2 ** self.scale_of(group)
        return (self.padded[0] // factor, self.padded[1] // factor, self.latent_channels)

    def group_sizes(self):
        return [math.prod(self.group_shape(g)) for g in range(self.num_groups)]

    def pad(self, x):
        height, width = self.image_shape[:2]
        return tf.pad(x, [[0, 0], [0, self.padded[0] - height], [0, self.padded[1] - width], [0, 0]])

    def crop(self, h):
        return h[:, :self.image_shape[0], :self.image_shape[1]]

    def split_code(self, code):
        """[B, code_dim] -> per-group maps [B, h, w, latent], top group first."""
        parts = tf.split(code, self.group_sizes(), axis=-1)
        return [tf.reshape(p, [-1, *self.group_shape(g)]) for g, p in enumerate(parts)]


def flat(maps):
    """Per-group maps [..., h, w, c] -> [..., Σ h·w·c], top group first."""
    return tf.concat([tf.reshape(m, tf.concat([tf.shape(m)[:-3], [-1]], 0)) for m in maps], -1)


def whitened_maps(trace):
    """The whitened maps [B, h, w, c] of a walk's draws, ε_l = (z_l − μp)/σp for each group's (prior,
    posterior, z) of `trace`, top group first."""
    return [(z - p.mean()) / p.stddev() for p, _, z in trace]


def whitened(trace):
    """The whitened code [B, Σ h·w·c] of a walk's draws (`whitened_maps`, flattened)."""
    return flat(whitened_maps(trace))


def whitened_means(trace):
    """The posterior means of a walk's groups in the whitened code [B, Σ h·w·c], (μq − μp)/σp for each group's
    (prior, posterior, z) of `trace`, top group first."""
    return flat([(q.mean() - p.mean()) / p.stddev() for p, q, _ in trace])


# ------------------------------------------------------------------ the model
@register_model("nvae")
@keras.saving.register_keras_serializable(package="keras_vae")
class NVAE(VAE):
    """A deep hierarchical VAE of latent maps at several scales with residual cells (Vahdat & Kautz 2020).

    The code of `encode`/`decode` is the whitened ε of every group (see the module docstring), whose prior
    is N(0, I) (but for the top groups under a learned `top_prior`); `sample(..., temperature=T)` draws
    ε ~ N(0, T² I) (a learned top prior's Gaussians at T times their scales there).
    """

    hyperparameters = (
        H("scales", int, 2, "NVAE: latent scales (the finest at 1/4 of the image's side, each next one half "
          "of it).", minimum=1, maximum=5, reference="Vahdat & Kautz 2020"),
        H("groups_per_scale", int, 2, "NVAE: latent groups at each scale.", minimum=1),
        H("latent_channels", int, 20, "NVAE: channels of each group's latent map.", minimum=1),
        H("channels", int, 32, "NVAE: feature channels at the finest latent scale (doubling at each coarser "
          "one; 1/4 and 1/2 of it in the pre- and postprocessing stacks).", minimum=4),
        H("cells_per_group", int, 1, "NVAE: residual cells per group, in the encoder and in the decoder.",
          minimum=1),
        H("spectral_reg", float, 0.01, "NVAE: weight of the spectral norms of all convolutions plus the "
          "largest batch-norm scale of each layer in the loss (0 turns both off).", minimum=0,
          reference="Vahdat & Kautz 2020"),
        H("squeeze_excite", bool, True, "NVAE: a squeeze-and-excitation gate at the end of every residual cell.",
          reference="Hu et al. 2018"),
        H("residual_posterior", bool, True, "NVAE: each group's posterior parameterized relative to its prior "
          "(N(μp + Δμ, (σp e^Δ)²)); off, the posterior's head gives its mean and log-scale directly."),
        H("clamp_sums", bool, False, "NVAE: clamp as the official code does: each group's mean and log-scale "
          "soft-clamped to ±5 after the posterior's offsets are added to the prior's, and every σ but the top "
          "group's prior floored at 0.01; off, the prior's parameters and the offsets are clamped apart (the "
          "posterior's log-scale then reaches ±10) and σ has no floor."),
        H("weight_norm", bool, False, "NVAE: weight-normalize every convolution of the hierarchy, as the official "
          "code does: kernel = g · v / ‖v‖ per output channel with a learned log g (starting at the initial "
          "kernel's norm plus 0.01), the spectral penalty taken on the normalized kernels.",
          reference="Salimans & Kingma 2016"),
        H("kl_balance", bool, True, "NVAE: weight each group's KL by its share during the KL warm-up, so that "
          "few groups cannot carry the whole code."),
        # Its own β, so that a dataset's default β does not reach it: sprites' 0.5, chosen for the `vae`, cost this
        # model 2.6 nats of −log p(x) and its samples' shapes (benchmarks/NVAE.md).
        H("beta", float, 1.0, "Weight of the groups' summed KL.", minimum=0, reference="Higgins et al. 2017"),
        H("group_free_bits", float, 0.0, "NVAE: floor, in nats, on each group's batch-mean KL in the loss once "
          "the balanced warm-up is over (all along without `kl_balance`), so that no group collapses later (a learned "
          "--top-prior's groups share one floor, except with --top-prior-per-group; a floored learned prior still "
          "fits the codes).",
          minimum=0, reference="Kingma et al. 2016 (free bits per group)"),
        H("top_prior", str, "normal", "NVAE: the prior of the top --top-prior-groups groups' whitened code: normal "
          "(N(0, I)), mog (a mixture of --top-prior-components diagonal Gaussians trained with the model), "
          "exemplar (the posterior means of the last --top-prior-components training images, each widened by a "
          "learned bandwidth) or autoregressive (each position of each group's map given the ones before it and "
          "the groups above, by a PixelCNN); the last three are trained with the model and take their KL by Monte "
          "Carlo, against the hole between the aggregate posterior and N(0, I).", choices=TOP_PRIORS,
          reference="Vahdat et al. 2021 (LSGM); Tomczak & Welling 2018; Norouzi et al. 2020; Gulrajani et al. 2017"),
        H("top_prior_groups", int, None, "NVAE: how many top groups a learned --top-prior covers (default: every "
          "group but the finest scale's).", minimum=1, nullable=True),
        H("top_prior_components", int, None, "NVAE: components of a mog --top-prior (default 100), training codes "
          "that an exemplar one keeps (default 4096; keep it well below the training images), or Gaussians per "
          "position of an autoregressive one (default 10).", minimum=1, nullable=True),
        H("top_prior_per_group", bool, False, "NVAE: with an autoregressive --top-prior, balance and floor "
          "(--group-free-bits) each of its groups' Monte-Carlo KL apart (the group's analytic KL against its "
          "Gaussian prior less log p(ε_g | ε_<g) − log N(ε_g; 0, I) at the draw: the density factorizes over the "
          "groups), instead of the block as one unit, so that no group of the block can fall idle behind the "
          "others."),
        H("top_prior_filters", int, 32, "NVAE: channels of each stream of an autoregressive --top-prior's "
          "PixelCNNs (one per group).", minimum=1),
    )
    unused_hyperparameters = ("latent_dim", "architecture", "posterior_scale", "free_bits", "prior",
                              "prior_components", "prior_refit", "dequantize", "aggressive_encoder", "decoder", "decoder_layers",
                              "decoder_filters", "decoder_dropout")
    reads_signals = False
    serves_temperature = True
    # float32 over sprites' `--precision auto`: bfloat16 made both presets' train step slower on an AMX CPU
    # (0.64-0.66x; `scripts/precision_benchmark.py policies`, benchmarks/NVAE.md).
    run_defaults = {"optimizer": "adamax", "learning_rate": 1e-2, "lr_schedule": "cosine", "lr_warmup": 0.05,
                    "precision": "float32"}
    warmup_fraction = 0.3  # of the run's steps, NVAE's KL annealing portion

    @classmethod
    def resolve_hyperparameters(cls, values, total_steps):
        values = dict(values)
        if values.get("kl_warmup_steps") is None:
            values["kl_warmup_steps"] = int(cls.warmup_fraction * (total_steps or 0))
        return values

    def __init__(self, image_shape, contrastive_groups=None, **kwargs):
        """`contrastive_groups`: the top groups whose prior a trained classifier reweights (set by `keras-vae
        fit-prior --method contrastive`, not a hyperparameter: training knows nothing of it); None for none."""
        if len(image_shape) != 3:
            raise UserError(f"--model nvae reads images [H, W, C]; received data of shape {list(image_shape)}.")
        super().__init__(image_shape, **kwargs)
        if self.top_prior_components is None:
            self.top_prior_components = TOP_PRIOR_COMPONENTS[self.top_prior]
        self.contrastive_groups = contrastive_groups
        groups = self.plan.num_groups
        if self.mixture_groups > groups:
            raise UserError(f"--top-prior-groups must be at most the {groups} groups of this nvae "
                            f"(--scales × --groups-per-scale). Received: top_prior_groups={self.top_prior_groups}.")
        if self.top_prior_per_group and self.top_prior != "autoregressive":
            raise UserError(f"--top-prior-per-group splits an autoregressive top prior's KL by group (its density "
                            f"factorizes over them); a {self.top_prior!r} top prior's does not. Use --top-prior "
                            f"autoregressive, or leave --top-prior-per-group off. Received: "
                            f"top_prior={self.top_prior!r}, top_prior_per_group=True.")
        if self.top_prior == "mog":
            priors.add_mixture_weights(self, self.top_prior_components, self.mixture_dim, TOP_PRIOR_LOC_SPREAD)
        elif self.top_prior == "exemplar":
            priors.add_exemplar_memory(self, self.top_prior_components, self.mixture_dim)
        elif self.top_prior == "autoregressive":
            self.top_networks = spatial_prior.build_networks(self.top_shapes(), self.top_prior_components,
                                                             self.top_prior_filters, self.seed)
        if contrastive_groups is not None:
            if not (isinstance(contrastive_groups, int) and 1 <= contrastive_groups <= self.plan.num_groups):
                raise UserError(f"--top-groups must name 1 to {self.plan.num_groups} top groups of this "
                                f"{self.plan.num_groups}-group nvae for its contrastive prior. Received: "
                                f"top_groups={contrastive_groups!r}.")
            if self.mixture_groups and contrastive_groups != self.mixture_groups:
                raise UserError(f"A contrastive prior over a learned top prior reweights that prior's block: "
                                f"this nvae's {self.top_prior!r} prior covers its top {self.mixture_groups} "
                                f"groups, so --top-groups must be {self.mixture_groups} (or left out). Received: "
                                f"top_groups={contrastive_groups}.")
            self.contrast = contrastive_prior.RatioNetwork(
                [self.plan.group_shape(g) for g in range(contrastive_groups)], seed=self.seed, name="contrastive_prior")
            self.contrast_log_normalizer = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                                           name="contrast_log_normalizer")
        self.build_state()

    def build_networks(self):
        self.plan = Plan(self.image_shape, self.scales, self.groups_per_scale, self.latent_channels, self.channels,
                         self.cells_per_group, self.squeeze_excite, self.residual_posterior, self.clamp_sums,
                         self.weight_norm)
        return (BottomUp(self.plan, name="encoder"),
                TopDown(self.plan, self.decoder_channels(), name="decoder"))

    def build_state(self):
        """Builds every layer (one pass of each path) and the power-iteration vectors of the convolutions."""
        self.encode(tf.zeros([1, *self.image_shape]))
        self.decoder(tf.zeros([1, self.code_dim]))
        if self.contrastive_groups is not None:
            self.contrast(tf.zeros([1, self.top_dim]))
        self.power_vectors = []
        for i, layer in enumerate(self.convolutions()):
            matrix = kernel_matrix(layer)
            start = tf.random.stateless_normal([matrix.shape[0]], seed=[self.seed, i])
            _, u = spectral_norm_estimate(matrix, tf.math.l2_normalize(start), INITIAL_POWER_ITERATIONS)
            self.power_vectors.append(keras.Variable(u, trainable=False, name=f"power_vector_{i}",
                                                     aggregation="only_first_replica"))

    def convolutions(self):
        """The convolution layers the spectral penalty covers, in a fixed order (found, not stored: a stored
        list of layers or kernels would be tracked, and saved, twice); not the contrastive prior's classifier,
        which is trained apart, after the model, nor an autoregressive top prior's PixelCNNs, a density rather
        than a path the stabilizer keeps smooth."""
        apart = set() if self.contrastive_groups is None else {id(c) for c in self.contrast.convs}
        for network in getattr(self, "top_networks", ()):
            apart.update(id(layer) for layer in network._flatten_layers())
        return [layer for layer in self._flatten_layers()
                if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and id(layer) not in apart]

    def batch_norms(self):
        return [layer for layer in self._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]

    @property
    def code_dim(self):
        return sum(self.plan.group_sizes())

    @property
    def top_dim(self):
        """The dimensions of the whitened code that the contrastive prior reweights (its first ones)."""
        return sum(self.plan.group_sizes()[:self.contrastive_groups or 0])

    @property
    def mixture_groups(self):
        """The top groups whose whitened code a learned `top_prior` covers (0 for an N(0, I) one)."""
        if self.top_prior == "normal":
            return 0
        return self.top_prior_groups or self.coarse_groups()

    @property
    def mixture_dim(self):
        """The dimensions of the whitened code that a learned `top_prior` covers (its first ones)."""
        return sum(self.plan.group_sizes()[:self.mixture_groups])

    def top_shapes(self):
        """(h, w, c) of each group a learned `top_prior` covers, top first."""
        return [self.plan.group_shape(g) for g in range(self.mixture_groups)]

    def top_mixture(self):
        """(logits [K], loc [K, L], scale [K, L], or [L] shared) of a mog or exemplar top prior's Gaussian mixture."""
        if self.top_prior == "exemplar":
            return priors.exemplar_parameters(self)
        return priors.mixture_parameters(self)

    def mixture_log_ratio(self, trace):
        """log p_top(ε_top) − log N(ε_top; 0, I) [B] at the draws of a walk's `trace`: what a learned
        `top_prior` adds to log p(z) against the Gaussian priors; 0 for an N(0, I) top prior."""
        if self.top_prior == "normal":
            return 0.0
        maps = whitened_maps(trace[:self.mixture_groups])
        return (tf.reduce_sum(self.top_log_density(maps), -1)
                - standard_normal_prior(self.mixture_dim).log_prob(flat(maps)))

    def top_log_density(self, maps):
        """A learned `top_prior`'s log-density of the top groups' whitened maps: [B, k], log p(ε_g | ε_<g) for
        each of the k groups of an autoregressive one (its density factorizes over them), or [B, 1] for a mixture."""
        if self.top_prior == "autoregressive":
            return spatial_prior.group_log_probs(self.top_networks, self.top_shapes(), self.top_prior_components,
                                                 maps)
        return priors.gaussian_mixture(*self.top_mixture()).log_prob(flat(maps))[:, None]

    def group_log_ratios(self, trace):
        """log p(ε_g | ε_<g) − log N(ε_g; 0, I) [B, k] for each of the k groups an autoregressive `top_prior`
        covers, at the draws of a walk's `trace`: its `mixture_log_ratio` group by group."""
        maps = whitened_maps(trace[:self.mixture_groups])
        normal = [standard_normal_prior(math.prod(shape)).log_prob(flat([m])) for m, shape in zip(maps, self.top_shapes())]
        return self.top_log_density(maps) - tf.stack(normal, -1)

    def coarse_groups(self):
        """The groups of every scale but the finest (one group for a one-scale model): what a learned top prior
        and a contrastive prior cover by default."""
        return max(1, self.plan.num_groups - self.plan.groups_per_scale)

    def default_contrastive_groups(self):
        """A learned top prior's groups (a contrastive prior reweights that block), else `coarse_groups`."""
        return self.mixture_groups or self.coarse_groups()

    def with_contrastive_prior(self, groups):
        """A copy of this model whose top `groups` groups have a contrastive prior, its classifier untrained
        (r = 1) and every other weight this model's."""
        def own(model):
            return [] if model.contrastive_groups is None else [*model.contrast.weights, model.contrast_log_normalizer]
        return rebuilt(self, own, contrastive_groups=groups)

    def prior_log_ratio(self, trace):
        """What the top prior adds to log p(z) against the Gaussian priors [B], at the draws of a walk's `trace`
        ((prior, posterior, z) per group): a learned top prior's `mixture_log_ratio` plus the contrastive
        prior's `contrast_log_ratio`; 0 with neither."""
        return self.mixture_log_ratio(trace) + self.contrast_log_ratio(trace)

    def contrast_log_ratio(self, trace):
        """log r(ε_top) − log Z [B] of the contrastive prior at the top groups' draws of a walk's `trace`; 0
        without one."""
        if self.contrastive_groups is None:
            return 0.0
        return self.contrast(whitened(trace[:self.contrastive_groups])) - self.contrast_log_normalizer

    def get_config(self):
        config = super().get_config()
        if self.contrastive_groups is not None:
            config["contrastive_groups"] = self.contrastive_groups
        return config

    def code_groups(self):
        names = []
        for g in range(self.plan.num_groups):
            h, w, c = self.plan.group_shape(g)
            names.append((f"group {g} ({h}×{w}×{c})", h * w * c))
        return names

    def generation_order(self):
        return list(range(self.plan.num_groups))  # the code holds the groups top first

    def inference_layers(self):
        return [self.encoder, *self.decoder.posterior_heads]

    def metric_names(self):
        return super().metric_names() + ("norm_penalty",) + tuple(f"kl_{g}" for g in range(self.plan.num_groups))

    # ------------------------------------------------------------ the hierarchy
    def walk(self, x, sampler, training=False, features=None):
        """Runs inference top down on x [B, H, W, C] (or on its bottom-up `features`, computed once for
        many samples): returns (likelihood parameters, [(prior, posterior, z)] per group), with
        z_l = sampler(l, q_l) for q_l the group's posterior distribution."""
        trace = []

        def choose(g, prior, posterior):
            q = diagonal_normal(*posterior, 3)
            z = sampler(g, q)
            trace.append((diagonal_normal(*prior, 3), q, z))
            return z

        features = self.encoder(x, training=training) if features is None else features
        return self.decoder.run(tf.shape(features[0])[0], choose, features, training), trace

    def norm_penalty(self, training):
        """Σ spectral norms of the convolutions + Σ max |γ| of the batch norms; a training pass also moves the
        power-iteration vectors one step."""
        total = tf.constant(0.0, tf.float32)
        for layer, vector in zip(self.convolutions(), self.power_vectors):
            sigma, u = spectral_norm_estimate(kernel_matrix(layer), vector)
            if training:
                vector.assign(u)
            total += sigma
        for layer in self.batch_norms():
            total += tf.reduce_max(tf.abs(tf.cast(layer.gamma, tf.float32)))
        return total

    # ---------------------------------------------------------- objective
    def compute_terms(self, x, training=False, y=None):
        seeds = split_seeds(self.noise_seed(), self.plan.num_groups)
        params, trace = self.walk(x, lambda g, q: q.sample(seed=seeds[g]), training)
        reconstruction_loss = -self.likelihood_layer(params, training=training).log_prob(x)
        per_dim = [losses.kl_per_dimension(q, p) for p, q, _ in trace]  # [B, h, w, c] each, via tfd.kl_divergence
        kl_groups = tf.stack([tf.reduce_sum(k, [1, 2, 3]) for k in per_dim], -1)  # [B, G]
        if self.top_prior_per_group:
            group_ratios = self.group_log_ratios(trace)
            log_ratio = tf.reduce_sum(group_ratios, -1) + self.contrast_log_ratio(trace)
        else:
            log_ratio = self.prior_log_ratio(trace)
        extra = {}
        if training and self.mixture_groups and self.group_free_bits > 0:
            extra["prior_fit"] = self.top_prior_fit(trace)
        if training and self.top_prior == "exemplar":  # after scoring the batch against the codes stored before it
            priors.remember_exemplars(self, whitened_means(trace[:self.mixture_groups]))
        kl = tf.reduce_sum(kl_groups, -1) - log_ratio
        units = kl_groups  # what the loss balances and floors: a learned top prior's block is one (module docstring)
        if self.mixture_groups:
            k = self.mixture_groups
            block = (kl_groups[:, :k] - group_ratios if self.top_prior_per_group else
                     tf.reduce_sum(kl_groups[:, :k], -1, keepdims=True) - log_ratio[:, None])
            units = tf.concat([block, kl_groups[:, k:]], -1)
        return elbo_terms(reconstruction_loss, kl, flat(per_dim), kl_units=units,
                          norm_penalty=self.norm_penalty(training), **extra,
                          **{f"kl_{g}": kl_groups[:, g] for g in range(self.plan.num_groups)})

    def top_prior_fit(self, trace):
        """−log p_top(ε_top) [B, units] of a learned top prior at a walk's draws held constant, one column per
        KL unit (zeros for the groups below it): what its weights are trained on while free bits floor its units
        (`losses.free_bits_kl`'s `kept_gradient`), so that the floor releases the posterior but never stops the
        prior fitting the codes (unfloored, a unit's own gradient with respect to those weights is the same)."""
        fit = -self.top_log_density([tf.stop_gradient(m) for m in whitened_maps(trace[:self.mixture_groups])])
        if not self.top_prior_per_group:
            fit = tf.reduce_sum(fit, -1, keepdims=True)
        below = len(self.kl_unit_sizes()) - fit.shape[-1]
        return tf.concat([fit, tf.zeros([tf.shape(fit)[0], below], fit.dtype)], -1)

    def kl_unit_sizes(self):
        """Latent variables of each unit of `compute_terms`' `kl_units`: every group's, a learned top
        prior's block as one (except with `top_prior_per_group`)."""
        sizes = self.plan.group_sizes()
        if not self.mixture_groups or self.top_prior_per_group:
            return sizes
        return [sum(sizes[:self.mixture_groups]), *sizes[self.mixture_groups:]]

    def regularizer(self, terms, beta):
        """β × the KL term, plus `spectral_reg` × the norm penalty. The KL term is balanced while warming up
        (with `kl_balance`); otherwise it is the plain KL, each group's batch mean floored at
        `group_free_bits` when that is set (under tf.distribute, both the balancing's weights and which groups
        are floored come from the global batch). A learned top prior's groups are balanced and floored as one
        (`kl_unit_sizes`), an autoregressive one's each apart with `top_prior_per_group`; floored, they still
        train the prior's weights on the codes (`top_prior_fit`)."""
        warming_up = self.kl_balance and self.kl_weight() < 1.0
        kl = tf.reduce_mean(balanced_kl(terms["kl_units"], self.kl_unit_sizes(), warming_up))
        if self.group_free_bits > 0:
            floored = losses.free_bits_kl(terms["kl_units"], self.group_free_bits, terms.get("prior_fit"))
            kl = floored if warming_up is False else tf.where(warming_up, kl, floored)
        return beta * kl + self.spectral_reg * terms["norm_penalty"]

    def importance_log_weights(self, x, num_samples, seed, y=None):
        """log p(x, z) − log q(z | x) for K top-down posterior samples: ([K, B], elbo [B])."""
        batch = tf.shape(x)[0]
        flat_x = tf.tile(x, [num_samples, 1, 1, 1])  # (K·B, H, W, C), sample-major
        features = [tf.tile(f, [num_samples, 1, 1, 1]) for f in self.encoder(x)]  # one bottom-up pass
        seeds = split_seeds(seed, self.plan.num_groups)
        params, trace = self.walk(None, lambda g, q: q.sample(seed=seeds[g]), features=features)
        log_weights = self.likelihood_layer(params).log_prob(flat_x)
        for p, q, z in trace:
            log_weights += p.log_prob(z) - q.log_prob(z)
        log_weights += self.prior_log_ratio(trace)
        log_weights = tf.reshape(log_weights, [num_samples, batch])
        return log_weights, tf.reduce_mean(log_weights, axis=0)

    # ------------------------------------------------- the whitened code
    def encode(self, x, y=None):
        """Means and standard deviations [B, code_dim] of the whitened code, each group at the posterior
        means of the groups above it."""
        _, trace = self.walk(x, lambda g, q: q.mean())
        return whitened_means(trace), flat([q.stddev() / p.stddev() for p, q, _ in trace])

    def whitened_posterior_sample(self, x, seed, y=None):
        """One ancestral draw z ~ q(z | x), each group given the draws above it, as the whitened code [B,
        code_dim] under the priors those draws give (ε_l = (z_l − μp)/σp): `decode` maps it back to the same
        z, so it is a draw from the aggregate posterior in the code that `sample` draws from N(0, I). (`encode`'s
        means and spreads take each group at the means of the groups above.)"""
        seeds = split_seeds(seed, self.plan.num_groups)
        _, trace = self.walk(x, lambda g, q: q.sample(seed=seeds[g]))
        return whitened(trace)

    def posterior(self, x, training=False, y=None):
        """The Gaussian over the whitened code that `encode` summarizes."""
        return diagonal_normal(*self.encode(x), 1)

    # ------------------------------------------------------ sampling
    def sample_codes(self, num_samples, seed, temperature=1.0):
        """`trained_prior_codes`; with a contrastive prior, the top groups' ε drawn instead from p_top·r / Z by
        sampling-importance-resampling (`contrastive_prior.sir_draws`), its proposals the trained top prior's
        draws at T (N(0, T² I) or a learned prior's). Stateless in `seed`."""
        if self.contrastive_groups is None:
            return self.trained_prior_codes(num_samples, seed, temperature)
        codes = super().sample_codes(num_samples, seed, temperature)  # below the top: what trained_prior_codes keeps
        propose = None  # N(0, T² I): sir_draws's own
        if self.mixture_groups:
            def propose(count, proposal_seed):
                return self.trained_prior_codes(count, proposal_seed, temperature)[:, :self.top_dim]
        top = contrastive_prior.sir_draws(self.contrast, num_samples, self.top_dim, seed, temperature,
                                          propose=propose)
        return tf.concat([top, codes[:, self.top_dim:]], -1)

    def trained_prior_codes(self, num_samples, seed, temperature=1.0):
        """Draws of the prior the model was trained with: ε ~ N(0, T² I); with a mog or exemplar top prior, the
        top groups' ε from its mixture, each component's scale times T (`priors.mixture_draws`); with an
        autoregressive one, position by position with each Gaussian's scale times T (`spatial_prior.draws`).
        Stateless in `seed`."""
        codes = super().sample_codes(num_samples, seed, temperature)
        if self.top_prior == "autoregressive":  # `codes` (ε ~ N(0, T² I)) are the noise of its draws
            top = spatial_prior.draws(self.top_networks, self.top_shapes(), self.top_prior_components,
                                      codes[:, :self.mixture_dim], tf.random.experimental.stateless_fold_in(seed, 1))
            return tf.concat([flat(top), codes[:, self.mixture_dim:]], -1)
        if self.mixture_groups:
            top = priors.mixture_draws(*self.top_mixture(), num_samples,
                                       tf.random.experimental.stateless_fold_in(seed, 1), temperature)
            return tf.concat([top, codes[:, self.mixture_dim:]], -1)
        return codes

    def redraw_dropped(self, codes, kept, noise, seed=0):
        """With a mog or exemplar top prior, the block's dimensions not `kept` are drawn from its mixture given the kept
        ones: each row's component from its weights given the kept dimensions (all of them a priori when none
        is kept; a Gumbel draw at `seed`), then loc + scale · `noise` (the temperature is in the noise). With an
        autoregressive one, whose groups come one after the other, the kept dimensions must be whole top groups;
        the groups below them are drawn position by position given them, with `noise` as their Gaussians'
        noise and `seed` for the components."""
        dim = self.mixture_dim
        if not dim or kept[:dim].all():
            return codes
        if self.top_prior == "autoregressive":
            return self.redraw_autoregressive(codes, kept, noise, seed)
        logits, loc, scale = (np.asarray(a, np.float64) for a in self.top_mixture())
        scale = np.broadcast_to(scale, loc.shape)
        top, given = np.asarray(codes[:, :dim], np.float64), kept[:dim]
        log_weights = mixture_log_joint(top[:, given], logits, loc[:, given], scale[:, given]).numpy()  # [N, K]
        # A stream of its own: callers draw `noise` from default_rng(seed).
        gumbel = -np.log(-np.log(np.random.default_rng([seed, 1]).uniform(size=log_weights.shape)))
        component = np.argmax(log_weights + gumbel, axis=1)
        drawn = loc[component] + scale[component] * noise[:, :dim]
        return np.concatenate([np.where(given, top, drawn).astype(codes.dtype), codes[:, dim:]], 1)

    def redraw_autoregressive(self, codes, kept, noise, seed):
        """`redraw_dropped` under an autoregressive top prior."""
        dim = self.mixture_dim
        offsets = np.cumsum([0, *self.plan.group_sizes()[:self.mixture_groups]])  # each top group's first dimension
        given = 0
        while given < self.mixture_groups and kept[offsets[given]:offsets[given + 1]].all():
            given += 1
        start = offsets[given]
        if kept[start:dim].any():
            raise ValueError(f"An autoregressive top prior redraws whole groups below the kept ones; the kept "
                             f"dimensions cover {given} whole top groups and part of the next. Received: "
                             f"{int(kept[:dim].sum())} of its {dim} dimensions kept.")
        maps = self.plan.split_code(tf.constant(codes, tf.float32))
        top = spatial_prior.draws(self.top_networks, self.top_shapes(), self.top_prior_components, noise[:, :dim],
                                  tf.constant([seed, 1], tf.int64), given=maps[:given])
        drawn = np.asarray(flat(top[given:]), codes.dtype)  # something is drawn: `redraw_dropped` returned if not
        return np.concatenate([codes[:, :start], drawn, codes[:, dim:]], 1)  # the kept groups exactly as given

    def prepare_sampling(self, temperature):
        """Below temperature 1 the decoder's batch norms meet samples unlike those of training: readjust."""
        if temperature != 1.0:
            self.readjust_batch_norm(temperature)

    def readjust_batch_norm(self, temperature=1.0, batches=READJUST_BATCHES, batch_size=100, seed=0):
        """Resets the decoder's batch-norm statistics to those of samples drawn at `temperature`, as NVAE
        does before sampling at low temperature: `batches` training-mode passes of the top-down path on
        `sample_codes`' draws at T, with the moving averages restarted and averaged over them. The top-down cells serve
        inference too, so `encode`, `reconstruct` and `score` of this model object change with them (as in
        NVAE); `keras-vae sample` readjusts a freshly loaded copy, and the saved model keeps training's."""
        norms = [layer for layer in self.decoder._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
        saved = [(layer.momentum, layer.trainable) for layer in norms]
        try:
            for layer in norms:
                layer.trainable = True  # Keras moves the statistics of trainable layers only
                layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
                layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
            for i in range(batches):
                for layer in norms:
                    layer.momentum = i / (i + 1.0)  # the running mean of the batches' statistics
                code = self.sample_codes(batch_size, tf.constant([seed, i], tf.int64), temperature)
                self.decoder(code, training=True)
        finally:
            for layer, (momentum, trainable) in zip(norms, saved):
                layer.momentum, layer.trainable = momentum, trainable
