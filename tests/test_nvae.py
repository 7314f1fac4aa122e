"""NVAE: its pure functions against closed forms, and the model's bound, code and sampling against
themselves (the registry-wide tests train, export and distribute it like every model)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from conftest import config_for, invoke, tiny_images
from keras_vae import losses
from keras_vae.config import FitConfig
from keras_vae.distributions import LogisticMixtureLikelihood, diagonal_normal, split_seeds
from keras_vae.errors import UserError
from keras_vae.models import build_model
from keras_vae.models.nvae import balanced_kl, residual_normal, spectral_norm_estimate

tfd = tfp.distributions


def logistic_cdf(x):
    return 0.5 * (1 + np.tanh(np.asarray(x) / 2))  # the logistic function, without overflow


# ------------------------------------------------------------------ pure functions
def test_power_iteration_finds_the_largest_singular_value_and_its_gradient():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(27, 8)).astype(np.float32)
    u_true, singular, v_true = np.linalg.svd(matrix)
    w = tf.Variable(matrix)
    start = tf.math.l2_normalize(tf.constant(rng.normal(size=27), tf.float32))
    with tf.GradientTape() as tape:
        sigma, u = spectral_norm_estimate(w, start, iterations=60)
    np.testing.assert_allclose(float(sigma), singular[0], rtol=1e-4)
    # d σ / d W = u₁ v₁ᵀ for the top singular pair (the sign of the pair cancels).
    np.testing.assert_allclose(tape.gradient(sigma, w).numpy(), np.outer(u_true[:, 0], v_true[0]), atol=1e-3)
    # One more step from the converged vector stays there.
    again, _ = spectral_norm_estimate(w, u, iterations=1)
    np.testing.assert_allclose(float(again), singular[0], rtol=1e-5)


def test_kl_balancing_weights_groups_by_their_share_while_warming_up_and_is_the_true_kl_after():
    kl = tf.constant([[1.0, 4.0, 10.0], [3.0, 4.0, 30.0]])  # [B, G]; batch means 2, 4, 20
    sizes = [10, 10, 40]
    with tf.GradientTape() as tape:
        tape.watch(kl)
        warm = balanced_kl(kl, sizes, tf.constant(True))
    gamma = np.array([2.01 / 1, 4.01 / 1, 20.01 / 4])
    gamma /= gamma.mean()
    np.testing.assert_allclose(warm.numpy(), kl.numpy() @ gamma, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(warm, kl).numpy(), np.tile(gamma, (2, 1)), rtol=1e-5)  # γ held
    np.testing.assert_allclose(balanced_kl(kl, sizes, tf.constant(False)).numpy(), [15.0, 37.0])


def test_the_residual_posteriors_kl_depends_only_on_the_change_it_makes():
    """KL(N(μp + Δμ, (σp e^Δ)²) ‖ N(μp, σp²)) = Δμ²/(2σp²) + (e^{2Δ} − 1)/2 − Δ, whatever μp."""
    prior_loc, prior_scale = tf.constant([[3.0, -1.0]]), tf.constant([[0.5, 2.0]])
    delta_loc, delta_log_scale = tf.constant([[1.0, 0.0]]), tf.constant([[0.0, -0.7]])
    q = diagonal_normal(*residual_normal(prior_loc, prior_scale, delta_loc, delta_log_scale), 1)
    p = diagonal_normal(prior_loc, prior_scale, 1)
    expected = (delta_loc ** 2 / (2 * prior_scale ** 2) + (np.exp(2 * delta_log_scale) - 1) / 2 - delta_log_scale)
    np.testing.assert_allclose(losses.kl_per_dimension(q, p).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.kl_divergence(q, p).numpy(), expected.numpy().sum(-1), rtol=1e-5)


def test_the_discretized_logistic_mixture_is_a_distribution_over_the_256_levels():
    rng = np.random.default_rng(1)
    layer = LogisticMixtureLikelihood(channels=1, components=3)
    params = tf.constant(rng.normal(size=(1, 1, 1, 3 * 3)), tf.float32)  # one pixel
    levels = tf.reshape(tf.range(256, dtype=tf.float32) / 255, [256, 1, 1, 1])
    log_p = layer(tf.tile(params, [256, 1, 1, 1])).log_prob(levels).numpy()
    np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-5)
    # Each level's mass is the mixture of logistic CDF differences over [k − ½, k + ½] (edges to ∓∞).
    logits, loc, scale = (t.numpy().reshape(3) for t in layer.parameters(params))
    weights = np.exp(logits) / np.exp(logits).sum()
    k = np.arange(256)[:, None]
    upper = np.where(k == 255, 1.0, logistic_cdf((k + 0.5 - loc) / scale))
    lower = np.where(k == 0, 0.0, logistic_cdf((k - 0.5 - loc) / scale))
    np.testing.assert_allclose(np.exp(log_p), (upper - lower) @ weights, atol=1e-6)


def test_the_mixture_shares_its_component_across_a_pixels_colour_channels():
    """P(x) = Σ_k π_k Π_c P_kc(x_c) for an RGB pixel, one component sharp (log-scale at its floor)."""
    layer = LogisticMixtureLikelihood(channels=3, components=2)
    logits, locs, raw_scales = [0.3, -0.2], [[-0.5, 0.1, 0.9], [0.2, 0.2, -0.8]], [[-7.0, -7.0, -7.0], [0.0, -1.0, -2.0]]
    params = tf.constant([[[logits + sum(locs, []) + sum(raw_scales, [])]]], tf.float32)  # [1, 1, 1, 2·(1 + 6)]
    _, loc, scale = layer.parameters(params)
    loc, scale = loc.numpy().reshape(2, 3), scale.numpy().reshape(2, 3)
    weights = np.exp(logits) / np.exp(logits).sum()

    def mass(k):  # [3] levels -> P(x)
        upper = np.where(k == 255, 1.0, logistic_cdf((k + 0.5 - loc) / scale))
        lower = np.where(k == 0, 0.0, logistic_cdf((k - 0.5 - loc) / scale))
        return float(weights @ np.prod(upper - lower, axis=1))

    sharp = np.round(loc[0])  # where the sharp component puts almost all its mass
    for levels in (sharp, np.array([0, 128, 255]), np.array([3, 200, 17])):
        x = tf.constant(levels.reshape(1, 1, 1, 3) / 255, tf.float32)
        np.testing.assert_allclose(float(tf.exp(layer(params).log_prob(x))[0]), mass(levels), rtol=1e-4, atol=1e-30)
    assert mass(sharp) > weights[0] * 0.5


def test_the_logistic_scale_is_bounded_above_so_binary_data_cannot_send_it_to_infinity():
    """On pixels at 0 and 255 only, a wider logistic always scores better; the soft ceiling keeps its scale
    (and the gradient) finite, and leaves small log-scales nearly as they are."""
    layer = LogisticMixtureLikelihood(channels=1, components=1)
    raw = tf.Variable([[[[0.0, 0.0, 1000.0], [0.0, 0.0, -3.0]]]])  # [1, 1, 2, 1·(1 + 2)]: a huge and a usual log-scale
    x = tf.constant([[[[0.0], [1.0]]]])
    with tf.GradientTape() as tape:
        log_p = layer(raw).log_prob(x)
    gradient = tape.gradient(log_p, raw)
    _, _, scale = layer.parameters(raw)
    assert np.isfinite(log_p.numpy()).all() and np.isfinite(gradient.numpy()).all()
    assert scale.numpy().max() <= np.exp(1.0) * 127.5 * (1 + 1e-6)
    np.testing.assert_allclose(scale.numpy().reshape(2)[1], np.exp(-3.0) * 127.5, rtol=0.025)


def test_the_logistic_mixture_needs_8_bit_data():
    with pytest.raises(UserError, match="logistic_mixture scores 8-bit values: it needs --binarize none"):
        FitConfig(likelihood="logistic_mixture")


# ------------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def nvae():
    config = config_for("nvae", kl_warmup_steps=0, channels=16, latent_channels=4, seed=3)
    model = build_model(config, (28, 28, 1))
    x = (tiny_images(256) / 255).astype(np.float32)
    model.compile(optimizer=keras.optimizers.Adamax(2e-3))
    model.fit(x, batch_size=32, epochs=2, verbose=0)
    return model, x


def test_28_pixel_images_are_padded_to_32_and_the_code_holds_every_group(nvae):
    model, x = nvae
    # 2 scales x 2 groups: latent maps of 8x8 and 4x4 (of the 32x32 padded image), 4 channels each.
    assert model.code_dim == 2 * 8 * 8 * 4 + 2 * 4 * 4 * 4
    terms = model.compute_terms(x[:8])
    assert terms["kl_per_dim"].shape == (8, model.code_dim)
    np.testing.assert_allclose(terms["kl"], tf.reduce_sum(terms["kl_per_dim"], -1), rtol=1e-4)
    np.testing.assert_allclose(terms["kl"], sum(terms[f"kl_{g}"] for g in range(4)), rtol=1e-5)
    np.testing.assert_allclose(terms["elbo"], -(terms["reconstruction_loss"] + terms["kl"]), rtol=1e-6)
    assert np.all(terms["kl_per_dim"].numpy() >= -1e-5)
    assert model.reconstruct(x[:2]).shape == (2, 28, 28, 1)


def test_the_importance_weights_estimate_the_same_elbo_as_the_training_terms(nvae):
    """Two unbiased estimates of each image's ELBO: the analytic-KL terms of `compute_terms` and the mean
    Monte-Carlo log-weight log p(x, z) − log q(z | x), over many posterior samples each (two different
    images, so that a K·B tiling that mixed examples up would show)."""
    model, x = nvae
    images = tf.constant(np.stack([x[0], 1 - x[0]]))  # a training image and its negative, which it never saw
    log_weights, _ = model.importance_log_weights(images, 300, seed=tf.constant([4, 5]))  # [K, 2]
    repeated = tf.repeat(images, 150, axis=0)  # 150 copies of each
    analytic = tf.reshape(tf.concat([model.compute_terms(repeated)["elbo"] for _ in range(2)], 0), [2, 2, 150])
    analytic = tf.reshape(tf.transpose(analytic, [1, 0, 2]), [2, 300]).numpy()  # [image, 300 samples]
    for i in range(2):
        monte_carlo = log_weights[:, i].numpy()
        stderr = math.hypot(np.std(monte_carlo), np.std(analytic[i])) / math.sqrt(300)
        assert abs(monte_carlo.mean() - analytic[i].mean()) < 4 * stderr + 0.5, i
    # The two images' ELBOs differ by far more than that, so a swap of columns would fail.
    assert abs(analytic[0].mean() - analytic[1].mean()) > 10


def test_the_whitened_code_decodes_what_the_posterior_means_decode(nvae):
    model, x = nvae
    mean, spread = model.encode(x[:4])
    assert np.all(spread.numpy() > 0)
    # decode(encode(x)) runs the top-down path with z_l = μp + σp ε_l: the posterior means, group by group.
    params, _ = model.walk(tf.constant(x[:4]), lambda g, q: q.mean())
    np.testing.assert_allclose(model.decode(mean), model.likelihood_layer.mean(params), atol=1e-5)
    # A whitened posterior draw decodes to the same z as the draw itself (the same seed, so the same noise).
    seed = tf.constant([4, 2], tf.int32)
    draw = model.whitened_posterior_sample(tf.constant(x[:4]), seed)
    seeds = split_seeds(seed, model.plan.num_groups)
    params, _ = model.walk(tf.constant(x[:4]), lambda g, q: q.sample(seed=seeds[g]))
    np.testing.assert_allclose(model.decode(draw), model.likelihood_layer.mean(params), atol=1e-5)
    assert not np.allclose(draw, mean, atol=0.05)  # a draw, not the means
    # Temperature 0 draws the prior's means: every seed gives the same images.
    first, code = model.sample(2, seed=1, temperature=0.0)
    second, _ = model.sample(2, seed=9, temperature=0.0)
    np.testing.assert_allclose(first, second, atol=1e-6)
    assert np.all(code.numpy() == 0)


def top_down(model, epsilons):
    """Runs the decoder on per-group whitened noise: (output [B, H, W, C], [prior loc per group])."""
    priors = []

    def choose(g, prior, _):
        priors.append(prior[0].numpy())
        return prior[0] + prior[1] * epsilons[g]

    return model.decoder.run(epsilons[0].shape[0], choose).numpy(), priors


def test_a_group_changes_every_group_below_it_and_none_above(nvae):
    """The hierarchy is causal top down: moving group k's noise leaves the priors of groups 0..k exactly
    as they were and moves the prior of every group below k, and the image; the bottom group moves the
    image alone."""
    model, _ = nvae
    plan = model.plan
    rng = np.random.default_rng(0)
    epsilons = [tf.constant(rng.standard_normal((3, *plan.group_shape(g))), tf.float32)
                for g in range(plan.num_groups)]
    output, priors = top_down(model, epsilons)
    for k in range(plan.num_groups):
        moved = list(epsilons)
        moved[k] = epsilons[k] + 2.0
        moved_output, moved_priors = top_down(model, moved)
        for g in range(plan.num_groups):
            change = np.abs(moved_priors[g] - priors[g]).max()
            if g <= k:
                assert change == 0.0, (k, g)
            else:
                assert change > 1e-4, (k, g)
        assert np.abs(moved_output - output).max() > 1e-3, k


def test_temperature_one_samples_are_ancestral_samples_of_the_prior(nvae):
    """`sample` draws the whitened code ε ~ N(0, T²I) and decodes z_l = μp + σp ε_l; at T = 1 its images
    must have the statistics of plain ancestral sampling, z_l ~ p(z_l | z_<l) drawn by tfd group by group."""
    model, _ = nvae
    n = 2000
    code = model.sample_codes(n, tf.constant([5, 1], tf.int64), 0.6)
    assert abs(float(tf.reduce_mean(code))) < 0.01 and abs(float(tf.math.reduce_std(code)) - 0.6) < 0.01
    images, _ = model.sample(n, seed=11, temperature=1.0)
    seeds = split_seeds(tf.constant([8, 8], tf.int64), model.plan.num_groups)
    params = model.decoder.run(
        n, lambda g, prior, _: diagonal_normal(*prior, 3).sample(seed=seeds[g]))
    ancestral = model.likelihood_layer.mean(params)
    a, b = images.numpy().reshape(n, -1), ancestral.numpy().reshape(n, -1)

    def z_scores(x, y):  # per pixel, of the difference of the two sample means
        return np.abs(x.mean(0) - y.mean(0)) / np.sqrt((x.var(0) + y.var(0)) / n + 1e-12)

    assert np.all((z_scores(a, b) < 5) | (np.abs(a.mean(0) - b.mean(0)) < 1e-3))
    # The test can tell: samples at T = 0.3 have clearly different pixel statistics.
    cold, _ = model.sample(n, seed=11, temperature=0.3)
    assert z_scores(cold.numpy().reshape(n, -1), b).max() > 10


def test_the_power_vectors_move_only_in_training_and_track_the_kernels_norms(nvae):
    model, x = nvae
    assert len(model.power_vectors) == len(model.convolutions()) > 10
    ids = [id(v) for v in model.trainable_weights]
    assert len(ids) == len(set(ids))  # no kernel tracked twice
    before = [v.numpy().copy() for v in model.power_vectors]
    penalty = float(model.compute_terms(x[:4])["norm_penalty"])
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.power_vectors))
    exact = 0.0
    for layer in model.convolutions():
        exact += np.linalg.svd(kernel_matrix_of(layer.kernel.numpy(), layer), compute_uv=False)[0]
    exact += sum(np.abs(layer.gamma.numpy()).max() for layer in model.batch_norms())
    np.testing.assert_allclose(penalty, exact, rtol=0.02)
    model.compute_terms(x[:4], training=True)
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.power_vectors))


def test_readjusted_batch_norms_match_the_statistics_of_low_temperature_samples(nvae):
    model, _ = nvae
    code = model.sample_codes(200, tf.constant([7, 7], tf.int64), 0.3)

    def gap():  # inference-mode output against the same batch normalized by its own statistics
        inference = model.decoder(code)
        return float(tf.reduce_mean(tf.abs(inference - model.decoder(code, training=True))))

    model.readjust_batch_norm(1.0, batches=10, batch_size=100, seed=1)
    at_one = gap()
    model.readjust_batch_norm(0.3, batches=10, batch_size=100, seed=1)
    at_low = gap()
    assert at_low < 0.7 * at_one  # the statistics of samples at T = 0.3 fit T = 0.3 samples better
    assert all(layer.momentum == 0.95 for layer in model.batch_norms())  # restored


def test_nvae_trains_with_adamax_and_a_cosine_schedule_by_default():
    from keras_vae.models import get_model_class

    defaults = get_model_class("nvae").run_defaults
    config = FitConfig(model="nvae").with_defaults(defaults)
    assert (config.optimizer, config.learning_rate, config.lr_schedule, config.lr_warmup) == ("adamax", 1e-2,
                                                                                             "cosine", 0.05)
    given = FitConfig(model="nvae", optimizer="adam").with_defaults(defaults)
    assert given.optimizer == "adam" and given.lr_schedule == "cosine"
    # In a run, the model's own settings join the data's (sprites: batch 32), the flags' still win.
    from types import SimpleNamespace

    from keras_vae.train import with_data_defaults

    sprites = SimpleNamespace(audio=None, image_shape=(64, 64, 1))
    run = with_data_defaults(FitConfig(model="nvae", dataset="sprites", learning_rate=0.003), sprites)
    assert (run.batch_size, run.optimizer, run.learning_rate, run.lr_schedule) == (32, "adamax", 0.003, "cosine")
    # ... but not sprites' `--precision auto`, which made the NVAE slower; a flag still asks for it.
    assert run.precision == "float32" and run.epochs == 12
    asked = with_data_defaults(FitConfig(model="nvae", dataset="sprites", precision="mixed_bfloat16"), sprites)
    assert asked.precision == "mixed_bfloat16"
    # Adamax's rate is not Adam's: another optimizer alone brings the declared rate back, the schedule stays.
    adam = with_data_defaults(FitConfig(model="nvae", dataset="sprites", optimizer="adam"), sprites)
    assert (adam.optimizer, adam.learning_rate, adam.lr_schedule) == ("adam", FitConfig().learning_rate, "cosine")
    same = with_data_defaults(FitConfig(model="nvae", dataset="sprites", optimizer="adamax"), sprites)
    assert same.learning_rate == 1e-2
    resolved = get_model_class("nvae").resolve_hyperparameters({"kl_warmup_steps": None}, 1000)
    assert resolved["kl_warmup_steps"] == 300  # NVAE's 30% of the run


@pytest.mark.parametrize("schedule, end", [("cosine", 0.0), ("constant", 0.01)])
def test_the_learning_rate_warms_up_linearly_then_follows_its_schedule(schedule, end):
    from keras_vae.train import learning_rate

    rate = learning_rate(FitConfig(learning_rate=0.01, lr_schedule=schedule, lr_warmup=0.1), 1000)
    np.testing.assert_allclose([float(rate(s)) for s in (0, 50, 100, 1000)], [0.0, 0.005, 0.01, end], atol=1e-7)
    if schedule == "cosine":  # half-way through the decay: half the rate
        np.testing.assert_allclose(float(rate(550)), 0.005, rtol=1e-4)


@pytest.mark.parametrize("epsilon", [None, 1e-3])
def test_the_optimizers_epsilon_is_the_configured_one(epsilon):
    """Adamax's first step is lr·g / (|g| + ε): with the official NVAE's ε = 1e-3 a gradient of 1e-4 moves
    its weight 11× less than with Keras's 1e-7."""
    from keras_vae.train import build_optimizer

    optimizer = build_optimizer(FitConfig(optimizer="adamax", learning_rate=0.01, optimizer_epsilon=epsilon), 100)
    weight = keras.Variable([0.0, 0.0])
    gradient = np.array([1e-4, 1.0], np.float32)
    optimizer.apply([tf.constant(gradient)], [weight])
    expected_epsilon = 1e-7 if epsilon is None else epsilon
    np.testing.assert_allclose(weight.numpy(), -0.01 * gradient / (np.abs(gradient) + expected_epsilon), rtol=1e-4)


def test_evaluate_reports_each_groups_kl_and_active_units(nvae):
    from keras_vae.data.splits import Split
    from keras_vae.evaluate import evaluate_model, format_table

    model, x = nvae
    report = evaluate_model(model, Split("test", x[:60]), iw_samples=2, batch_size=30, progress=False)
    groups = report["code_groups"]
    assert list(groups) == ["group 0 (4×4×4)", "group 1 (4×4×4)", "group 2 (8×8×4)", "group 3 (8×8×4)"]
    np.testing.assert_allclose(sum(g["kl"] for g in groups.values()), report["kl"], rtol=1e-4)
    assert sum(g["active_units"] for g in groups.values()) == report["active_units"]
    table = format_table(report)
    assert "group 2 (8×8×4)" in table and "KL per dimension" not in table  # 640 numbers would not help


# ------------------------------------------------------------------ the ablation switches
def untrained_nvae(**switches):
    return build_model(config_for("nvae", channels=8, latent_channels=2, kl_warmup_steps=100, seed=5, **switches),
                       (28, 28, 1))


def test_without_squeeze_excite_no_cell_has_a_gate_and_the_cells_lose_exactly_its_weights():
    from keras_vae.models.nvae import SqueezeExcite

    full, bare = untrained_nvae(), untrained_nvae(squeeze_excite=False)

    def gates(model):
        return [layer for layer in model._flatten_layers() if isinstance(layer, SqueezeExcite)]

    assert gates(bare) == [] and len(gates(full)) == (2 + 4) + (4 + 2)  # encoder: pre, groups; decoder: groups, post
    assert full.count_params() - bare.count_params() == sum(layer.count_params() for layer in gates(full))


def test_the_residual_posterior_reads_the_prior_and_the_direct_one_does_not():
    """Group 1's posterior moves with its prior's head only when parameterized relative to the prior."""
    x = tf.constant((tiny_images(4) / 255).astype(np.float32))
    for residual in (True, False):
        model = untrained_nvae(residual_posterior=residual)

        def posterior_of_group_1():
            _, trace = model.walk(x, lambda g, q: q.mean())
            return trace[1][1].mean().numpy(), trace[1][1].stddev().numpy()

        before = posterior_of_group_1()
        head = model.decoder.prior_heads[1].layers[0]
        head.kernel.assign(head.kernel + 0.5)
        after = posterior_of_group_1()
        moved = not (np.allclose(before[0], after[0]) and np.allclose(before[1], after[1]))
        assert moved == residual


def test_clamp_sums_clamps_the_posteriors_sums_and_floors_every_scale_as_the_official_code_does():
    """With `clamp_sums`, group l's posterior is N(5 tanh((μp + Δμ)/5), (exp(5 tanh((log σp + Δ log σ)/5)) +
    0.01)²) of the heads' raw outputs and its prior's σ has the same floor; without it the prior's parameters
    and the offsets are clamped apart, so that large head outputs put log σq beyond 5."""
    from keras_vae.models.nvae import SCALE_FLOOR

    def clamp(value):
        return 5 * np.tanh(value / 5)

    x = tf.constant((tiny_images(4) / 255).astype(np.float32))
    for sums in (False, True):
        model = untrained_nvae(clamp_sums=sums)
        for head in model.decoder.prior_heads[1:] + model.decoder.posterior_heads:
            bias = next(w for w in head.weights if "bias" in w.path)
            bias.assign(tf.fill(bias.shape, 4.0))  # large raw means and log-scales at every group
        raw, gaussian = [], model.decoder.gaussian
        model.decoder.gaussian = lambda head, h: raw.append([t.numpy() for t in gaussian(head, h)]) or raw[-1]
        _, trace = model.walk(x, lambda g, q: q.mean())
        (prior_loc, prior_log_scale), (delta_loc, delta_log_scale) = raw[1], raw[2]  # group 1: its prior, then q
        prior, posterior = trace[1][0], trace[1][1]
        if sums:
            np.testing.assert_allclose(posterior.mean(), clamp(prior_loc + delta_loc), rtol=1e-5)
            np.testing.assert_allclose(posterior.stddev(),
                                       np.exp(clamp(prior_log_scale + delta_log_scale)) + SCALE_FLOOR, rtol=1e-5)
            np.testing.assert_allclose(prior.stddev(), np.exp(clamp(prior_log_scale)) + SCALE_FLOOR, rtol=1e-5)
        else:
            np.testing.assert_allclose(posterior.mean(), clamp(prior_loc) + clamp(delta_loc), rtol=1e-5)
            np.testing.assert_allclose(posterior.stddev(), np.exp(clamp(prior_log_scale) + clamp(delta_log_scale)),
                                       rtol=1e-5)
            np.testing.assert_allclose(prior.stddev(), np.exp(clamp(prior_log_scale)), rtol=1e-5)
        assert (np.log(posterior.stddev().numpy()).max() > 5) == (not sums)
        assert (np.abs(posterior.mean().numpy()).max() > 5) == (not sums)
        np.testing.assert_array_equal(trace[0][0].stddev(), 1.0)  # the top group's prior stays N(0, I)


def test_weight_normalization_holds_each_output_channels_norm_at_its_learned_value_whatever_the_kernels_scale():
    """w = g v / (‖v‖ + 1e-5) per output channel: ‖w‖ = g, w does not change when v is scaled, so the gradient
    with respect to v is orthogonal to v (Salimans & Kingma 2016); a depthwise kernel [kh, kw, C, 1] is normalized
    per channel."""
    from keras_vae.models.nvae import weight_normalized

    rng = np.random.default_rng(0)
    for shape, axes in (((3, 3, 5, 4), (0, 1, 2)), ((5, 5, 6, 1), (0, 1, 3))):
        kernel = tf.Variable(rng.normal(size=shape).astype(np.float32))
        log_norm = tf.constant(rng.normal(size=shape[-1] if axes == (0, 1, 2) else shape[2]).astype(np.float32))
        with tf.GradientTape() as tape:
            w = weight_normalized(kernel, log_norm, axes)
            loss = tf.reduce_sum(w * tf.constant(rng.normal(size=shape).astype(np.float32)))
        np.testing.assert_allclose(np.sqrt((w.numpy() ** 2).sum(axes)).ravel(), np.exp(log_norm), rtol=1e-4)
        np.testing.assert_allclose(weight_normalized(3.0 * kernel, log_norm, axes), w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose((tape.gradient(loss, kernel).numpy() * kernel.numpy()).sum(axes), 0, atol=1e-4)


def test_a_weight_normalized_convolution_normalizes_each_output_channel_in_float32():
    """Scaling one output channel's kernel leaves the layer's output as it was, scaling one input channel's does
    not; under mixed_float16 the log-norm starts at the float32 norm of a tiny kernel (whose squares would be
    float16 subnormals) and the output is the float32-normalized convolution's."""
    from keras_vae.models.nvae import WeightNormConv2D, WeightNormDepthwiseConv2D

    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 6, 6, 3)).astype(np.float32))
    for layer, out_axis in ((WeightNormConv2D(4, 3, padding="same", use_bias=False), 3),
                            (WeightNormDepthwiseConv2D(5, padding="same", use_bias=False), 2)):
        before, kernel = layer(x).numpy(), layer.kernel.numpy()
        per_output = np.ones(kernel.shape[out_axis], np.float32)
        per_output[1] = 3.0
        layer.kernel.assign(kernel * per_output.reshape([-1 if a == out_axis else 1 for a in range(4)]))
        np.testing.assert_allclose(layer(x), before, rtol=1e-4, atol=1e-5)
        if out_axis == 3:  # a plain convolution's input channels share each output channel's norm
            per_input = np.array([1.0, 3.0, 1.0], np.float32).reshape(1, 1, 3, 1)
            layer.kernel.assign(kernel * per_input)
            assert not np.allclose(layer(x), before, rtol=1e-2, atol=1e-3)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = WeightNormConv2D(4, 3, padding="same", use_bias=False,
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3, seed=1))
        y = layer(tf.cast(x, tf.float16))
    finally:
        keras.config.set_dtype_policy(previous)
    kernel = layer.kernel.numpy().astype(np.float64)
    np.testing.assert_allclose(np.exp(layer.log_norm.numpy()), np.sqrt((kernel ** 2).sum((0, 1, 2))) + 0.01, rtol=1e-5)
    assert y.dtype == tf.float16
    exact = tf.nn.conv2d(tf.cast(tf.cast(x, tf.float16), tf.float32), layer.effective_kernel(), 1, "SAME")
    np.testing.assert_allclose(tf.cast(y, tf.float32), exact, rtol=5e-3, atol=5e-3)


def test_weight_norm_normalizes_every_convolution_which_the_spectral_penalty_reads_and_a_save_keeps(tmp_path):
    """With `weight_norm`, every convolution of the hierarchy is weight-normalized (one learned log-norm per
    output channel more, starting at the initial kernel's norm plus 0.01), so that scaling every kernel leaves
    the model's output unchanged (it changes the plain model's); the spectral penalty is that of the normalized
    kernels; the gradient of the loss is orthogonal to each kernel; a save and load keeps the log-norms."""
    from keras_vae.export import save_keras_model
    from keras_vae.models.nvae import WeightNormConv2D, WeightNormDepthwiseConv2D

    x = tf.constant((tiny_images(4) / 255).astype(np.float32))
    plain, normalized = untrained_nvae(), untrained_nvae(weight_norm=True)
    layers = normalized.convolutions()
    assert len(layers) == len(plain.convolutions())
    assert all(isinstance(layer, (WeightNormConv2D, WeightNormDepthwiseConv2D)) for layer in layers)
    assert not any(isinstance(layer, (WeightNormConv2D, WeightNormDepthwiseConv2D)) for layer in plain.convolutions())
    assert normalized.count_params() - plain.count_params() == sum(layer.kernel.shape[-1] if
                                                                   isinstance(layer, WeightNormConv2D) else
                                                                   layer.kernel.shape[2] for layer in layers)
    for layer in layers:
        kernel = layer.kernel.numpy()
        np.testing.assert_allclose(np.exp(layer.log_norm.numpy()).ravel(),
                                   np.sqrt((kernel ** 2).sum(layer.norm_axes)).ravel() + 0.01, rtol=1e-5)

    def output(model):
        return model.walk(x, lambda g, q: q.mean())[0].numpy()

    def scale_kernels(model, factor):
        for layer in model.convolutions():
            layer.kernel.assign(factor * layer.kernel)

    for model, invariant in ((normalized, True), (plain, False)):
        before = output(model)
        scale_kernels(model, 3.0)
        assert np.allclose(output(model), before, rtol=1e-3, atol=1e-4) == invariant
        scale_kernels(model, 1 / 3)

    for layer in layers:  # every kernel e^0.5 times its raw self (its singular vectors, and the power vectors, kept)
        layer.log_norm.assign(layer.log_norm + 0.5)
    exact = sum(np.linalg.svd(kernel_matrix_of(layer.effective_kernel().numpy(), layer), compute_uv=False)[0]
                for layer in layers)
    raw = sum(np.linalg.svd(kernel_matrix_of(layer.kernel.numpy(), layer), compute_uv=False)[0] for layer in layers)
    assert exact > 1.5 * raw
    gammas = sum(np.abs(layer.gamma.numpy()).max() for layer in normalized.batch_norms())
    np.testing.assert_allclose(float(normalized.compute_terms(x)["norm_penalty"]) - gammas, exact, rtol=0.02)

    kernels = [layer.kernel for layer in layers]
    with tf.GradientTape() as tape:
        terms = normalized.compute_terms(x, training=True)
        loss = tf.reduce_mean(terms["reconstruction_loss"] + terms["kl"])
    for layer, gradient in zip(layers, tape.gradient(loss, kernels)):
        radial = (gradient.numpy() * layer.kernel.numpy()).sum(layer.norm_axes)
        np.testing.assert_allclose(radial, 0, atol=1e-4 * max(1.0, np.abs(gradient.numpy()).max()))

    path = str(tmp_path / "model.keras")  # its log-norms no longer their initial values
    save_keras_model(normalized, path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(output(loaded), output(normalized), rtol=1e-5, atol=1e-6)


def kernel_matrix_of(kernel, layer):
    """A kernel [kh, kw, in, out] as [kh·kw·in, out], a depthwise one [kh, kw, C, 1] as [kh·kw, C]."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return kernel.reshape(kernel.shape[0] * kernel.shape[1], -1)
    return kernel.reshape(-1, kernel.shape[-1])


def warming_nvae_terms(balance):
    """An untrained NVAE at step 0 of its KL warm-up (with or without balancing), and its terms on 8 images."""
    model = untrained_nvae(kl_balance=balance, spectral_reg=0.0)
    model.compile(optimizer=keras.optimizers.Adamax(1e-3))
    return model, model.compute_terms(tf.constant((tiny_images(8) / 255).astype(np.float32)))


def test_group_free_bits_floor_each_groups_batch_mean_kl_once_the_balanced_warm_up_is_over():
    for balance in (True, False):
        model, terms = warming_nvae_terms(balance)
        kl_groups = terms["kl_units"]
        group_means = np.mean(kl_groups.numpy(), 0)
        floor = float(np.median(group_means))  # some groups above it, some below
        assert np.any(group_means < floor) and np.any(group_means > floor)
        model.group_free_bits = floor
        floored = np.sum(np.maximum(group_means, floor))
        balanced = float(tf.reduce_mean(balanced_kl(kl_groups, model.plan.group_sizes(), tf.constant(True))))
        np.testing.assert_allclose(model.regularizer(terms, 1.0), balanced if balance else floored, rtol=1e-5)
        model.optimizer.iterations.assign(100)  # the warm-up is over
        np.testing.assert_allclose(model.regularizer(terms, 1.0), floored, rtol=1e-5)
        assert floored > float(tf.reduce_mean(terms["kl"])) + 1e-3  # the floor binds here


def test_without_kl_balance_the_warm_up_penalizes_the_plain_kl():
    for balance in (True, False):
        model, terms = warming_nvae_terms(balance)
        kl_groups = terms["kl_units"]
        balanced = balanced_kl(kl_groups, model.plan.group_sizes(), tf.constant(True))
        expected = tf.reduce_mean(balanced if balance else tf.reduce_sum(kl_groups, -1))
        np.testing.assert_allclose(model.regularizer(terms, 1.0), expected, rtol=1e-5)
    assert abs(float(tf.reduce_mean(balanced)) - float(tf.reduce_mean(terms["kl"]))) > 1e-3  # they differ here


# ------------------------------------------------------------------ a mixture top prior, trained with the model
def mog_nvae(loc, scale, weights):
    """An untrained 4-group NVAE whose mog top prior (over the top 2 groups) is set to the mixture with means
    loc [K, D] (a row of one value per component, broadcast to D), one scale and the given weights."""
    from keras_vae.priors import assign_mixture

    keras.utils.set_random_seed(0)  # the same weights whatever ran before in this worker process
    model = untrained_nvae(top_prior="mog", top_prior_components=len(weights), spectral_reg=0.0)
    dim = model.mixture_dim
    assign_mixture(model, np.log(weights), np.broadcast_to(np.asarray(loc, np.float64)[:, None], (len(loc), dim)),
                   np.full((len(loc), dim), scale))
    return model


def mixture_log_density_direct(code, logits, loc, scale):
    """log Σ_k π_k Π_d N(code_d; loc_kd, scale_kd²) per row, term by term in float64 NumPy."""
    code, loc, scale = (np.asarray(a, np.float64) for a in (code, loc, scale))
    log_normal = -0.5 * ((code[:, None] - loc[None]) / scale[None]) ** 2 - np.log(scale[None]) - 0.5 * np.log(2 * np.pi)
    joint = np.log(np.exp(logits) / np.exp(logits).sum()) + log_normal.sum(-1)  # [N, K]
    top = joint.max(1, keepdims=True)
    return (top + np.log(np.exp(joint - top).sum(1, keepdims=True)))[:, 0]


def test_a_mog_top_prior_covers_the_top_groups_and_enters_the_kl_by_monte_carlo():
    from keras_vae.models.nvae import whitened

    model = mog_nvae([-0.8, 0.3, 1.1], 0.7, [0.2, 0.3, 0.5])  # far from N(0, I): tens of nats of difference
    assert model.mixture_groups == 2  # every group but the finest scale's (2 scales x 2 groups)
    assert model.mixture_dim == sum(model.plan.group_sizes()[:2]) == model.prior_loc.shape[1]
    x = tf.constant((tiny_images(6) / 255).astype(np.float32))
    seeds = split_seeds(tf.constant([1, 2]), model.plan.num_groups)
    _, trace = model.walk(x, lambda g, q: q.sample(seed=seeds[g]))
    code = whitened(trace[:2]).numpy()
    scale = tf.nn.softplus(model.prior_raw_scale).numpy() + 1e-4
    direct = (mixture_log_density_direct(code, model.prior_logits.numpy(), model.prior_loc.numpy(), scale)
              - mixture_log_density_direct(code, np.zeros(1), np.zeros((1, code.shape[1])), np.ones((1, code.shape[1]))))
    assert np.all(np.abs(direct) > 10)
    np.testing.assert_allclose(model.mixture_log_ratio(trace), direct, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(model.prior_log_ratio(trace), direct, rtol=1e-4, atol=1e-2)
    # The training terms: every group's KL analytic against its Gaussian prior; the ELBO's KL less the
    # mixture's term; the loss's units the top 2 groups' Monte-Carlo KL as one, then each group below.
    terms = model.compute_terms(x)
    sizes = np.cumsum([0, *model.plan.group_sizes()])
    analytic = np.stack([terms["kl_per_dim"][:, a:b].numpy().sum(1) for a, b in zip(sizes[:-1], sizes[1:])], 1)
    for g in range(4):
        np.testing.assert_allclose(terms[f"kl_{g}"], analytic[:, g], rtol=1e-5)
    assert np.all(np.abs(terms["kl"].numpy() - analytic.sum(1)) > 3)  # the mixture's term is there
    units = terms["kl_units"].numpy()
    assert units.shape == (6, 3) and model.kl_unit_sizes() == [model.mixture_dim, *model.plan.group_sizes()[2:]]
    np.testing.assert_allclose(units[:, 1:], analytic[:, 2:], rtol=1e-5)
    np.testing.assert_allclose(units.sum(1), terms["kl"], rtol=1e-5)
    np.testing.assert_allclose(terms["elbo"], -(terms["reconstruction_loss"] + terms["kl"]), rtol=1e-6)
    # While warming up, KL balancing weighs the block as one unit, not its groups apart.
    model.compile(optimizer=keras.optimizers.Adamax(1e-3))
    balanced = balanced_kl(terms["kl_units"], model.kl_unit_sizes(), tf.constant(True))
    np.testing.assert_allclose(model.regularizer(terms, 1.0), tf.reduce_mean(balanced), rtol=1e-5)
    apart = np.concatenate([analytic[:, :1] - (analytic.sum(1) - terms["kl"].numpy())[:, None], analytic[:, 1:]], 1)
    by_group = balanced_kl(tf.constant(apart), model.plan.group_sizes(), tf.constant(True))
    assert abs(float(model.regularizer(terms, 1.0)) - float(tf.reduce_mean(by_group))) > 1.0


def test_with_a_mog_top_prior_the_importance_weights_and_the_training_terms_estimate_one_elbo():
    model = mog_nvae([-1.5, 0.5, 2.0], 0.5, [0.2, 0.3, 0.5])
    x = tf.constant((tiny_images(2) / 255).astype(np.float32))
    log_weights, _ = model.importance_log_weights(x, 200, seed=tf.constant([4, 5]))  # [K, 2]
    every = model.compute_terms(tf.repeat(x, 200, axis=0))
    terms = every["elbo"].numpy().reshape(2, 200)
    # Under N(0, I) the same draws would score another ELBO (the groups' analytic KL alone), beyond the
    # tolerance: importance weights that left the mixture out would fail.
    gaussian = -(every["reconstruction_loss"] + sum(every[f"kl_{g}"] for g in range(4)))
    for i in range(2):
        stderr = math.hypot(np.std(log_weights[:, i]), np.std(terms[i])) / math.sqrt(200)
        assert abs(float(np.mean(log_weights[:, i])) - float(np.mean(terms[i]))) < 4 * stderr + 0.5, i
        assert abs(float(np.mean(gaussian.numpy().reshape(2, 200)[i])) - float(np.mean(terms[i]))) > 4 * stderr + 0.5


def test_a_mog_top_prior_draws_its_mixture_and_n01_below_it_at_the_temperature():
    model = mog_nvae([-4.0, 0.0, 4.0], 0.5, [0.2, 0.3, 0.5])
    seed = tf.constant([3, 0], tf.int64)
    codes = model.sample_codes(4000, seed, temperature=0.5).numpy()
    np.testing.assert_array_equal(codes, model.sample_codes(4000, seed, temperature=0.5).numpy())
    top, below = codes[:, :model.mixture_dim], codes[:, model.mixture_dim:]
    component = np.digitize(top[:, 0], [-2.0, 2.0])  # the three components are 16 spreads apart
    np.testing.assert_allclose(np.bincount(component) / 4000, [0.2, 0.3, 0.5], atol=0.03)
    residual = top - np.array([-4.0, 0.0, 4.0])[component][:, None]  # every dimension follows its row's component
    assert abs(np.std(residual) - 0.25) < 0.01 and abs(np.mean(residual)) < 0.01  # the scale times T
    assert abs(np.std(below) - 0.5) < 0.01 and abs(np.mean(below)) < 0.01


def prior_density_under_elbo_steps(model, variables, learning_rate, steps, x):
    """The top prior's mean log-ratio against N(0, I) at fixed posterior draws of x, before and after `steps` Adam
    steps on the ELBO (through `compute_terms`' Monte-Carlo KL) that move only `variables`."""
    seeds = split_seeds(tf.constant([1, 2]), model.plan.num_groups)
    _, trace = model.walk(x, lambda g, q: q.sample(seed=seeds[g]))
    before = float(tf.reduce_mean(model.mixture_log_ratio(trace)))
    optimizer = keras.optimizers.Adam(learning_rate)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.compute_terms(x)["elbo"])
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return before, float(tf.reduce_mean(model.mixture_log_ratio(trace)))


def test_the_elbo_fits_a_mog_top_prior_to_the_codes():
    """Steps on the ELBO alone (through `compute_terms`' Monte-Carlo KL), moving only the mixture, raise its
    density of the posterior's draws: the prior learns from the same objective as the model."""
    model = mog_nvae([-0.8, 0.3, 1.1], 0.7, [0.2, 0.3, 0.5])
    mixture = [model.prior_logits, model.prior_loc, model.prior_raw_scale]
    assert all(any(v is w for w in model.trainable_weights) for v in mixture)
    x = tf.constant((tiny_images(16) / 255).astype(np.float32))
    before, after = prior_density_under_elbo_steps(model, mixture, 0.1, 6, x)
    assert after > before + 5


def test_a_mog_top_prior_is_saved_and_its_draws_are_stateless_in_a_graph(tmp_path):
    """The mixture's weights survive a save and load, and a traced graph (as the `sample` signature runs) draws
    the same codes as eager calls, its top groups from the mixture. (The SavedModel export of an nvae, read as
    TF Serving reads it, is the registry-wide test's; exporting this one too would cost the suite ~40 s.)"""
    from keras_vae.export import save_keras_model

    model = mog_nvae([-4.0, 4.0], 0.5, [0.5, 0.5])
    save_keras_model(model, str(tmp_path / "model.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_array_equal(loaded.prior_loc.numpy(), model.prior_loc.numpy())
    seed = tf.constant([3, 0], tf.int64)
    eager = model.sample_codes(8, seed, 0.5).numpy()
    np.testing.assert_array_equal(loaded.sample_codes(8, seed, 0.5), eager)
    traced = tf.function(lambda s, t: model.sample_codes(8, s, t))
    np.testing.assert_allclose(traced(seed, tf.constant(0.5)), eager, rtol=1e-6)
    assert np.all(np.abs(np.abs(eager[:, :model.mixture_dim]) - 4.0) < 1.5)  # each row at a component, ±4


def test_resampling_under_a_mog_top_prior_draws_the_dropped_top_groups_from_the_mixture_given_the_kept():
    from keras_vae.explore import resampled_codes

    model = mog_nvae([-4.0, 4.0], 0.5, [0.2, 0.8])
    sizes = model.plan.group_sizes()
    loc = np.zeros((400, model.code_dim), np.float32)
    loc[:200, :sizes[0]], loc[200:, :sizes[0]] = -4.0, 4.0  # the top group at one component or the other
    noise = np.random.default_rng(0).standard_normal(loc.shape).astype(np.float32)
    one = resampled_codes(model, loc, noise, 1)  # the top group kept, the second drawn given it
    np.testing.assert_array_equal(one[:, :sizes[0]], loc[:, :sizes[0]])
    second = one[:, sizes[0]:model.mixture_dim]
    np.testing.assert_allclose(second, np.where(loc[:, :1] > 0, 4.0, -4.0) + 0.5 * noise[:, sizes[0]:model.mixture_dim],
                               rtol=1e-5)  # the kept group's component
    np.testing.assert_array_equal(one[:, model.mixture_dim:], noise[:, model.mixture_dim:])  # below: N(0, I)
    none = resampled_codes(model, loc, noise, 0)[:, :model.mixture_dim]  # nothing kept: the mixture itself
    side = np.sign(none[:, 0])
    assert np.all(np.sign(none) == side[:, None]) and 0.72 < np.mean(side > 0) < 0.88  # at the weights (0.8)
    np.testing.assert_array_equal(resampled_codes(model, loc, noise, 2), np.where(
        np.arange(model.code_dim) < model.mixture_dim, loc, noise))  # the block kept whole: nothing redrawn


def test_a_mog_top_prior_names_its_groups_and_a_contrastive_prior_covers_them():
    with pytest.raises(UserError, match="--top-prior-groups must be at most the 4 groups"):
        untrained_nvae(top_prior="mog", top_prior_groups=5)
    model = untrained_nvae(top_prior="mog", top_prior_components=2)
    assert model.default_contrastive_groups() == model.mixture_groups == 2
    with pytest.raises(UserError, match="covers its top 2 groups, so --top-groups must be 2 .* top_groups=1"):
        model.with_contrastive_prior(1)
    assert model.with_contrastive_prior(2).top_dim == model.mixture_dim


def test_the_exemplar_memory_is_a_ring_whose_oldest_codes_go_first():
    from keras_vae.priors import add_exemplar_memory, remember_exemplars

    holder = keras.layers.Layer()
    add_exemplar_memory(holder, 4, 2)

    def store(*values):
        remember_exemplars(holder, tf.constant(np.repeat(np.array(values, np.float32)[:, None], 2, 1)))
        return holder.prior_loc.numpy()[:, 0].tolist(), int(holder.exemplar_slot.numpy())

    assert store(1, 2, 3) == ([1, 2, 3, 0], 3)
    assert store(4, 5) == ([5, 2, 3, 4], 1)  # wraps round: 1, the oldest, goes first
    assert store(6, 7, 8, 9, 10, 11) == ([11, 8, 9, 10], 1)  # more codes than places: the last 4, from the slot
    traced = tf.function(lambda codes: remember_exemplars(holder, codes))  # as in a train step
    traced(tf.constant([[12.0, 12.0]]))
    assert holder.prior_loc.numpy()[:, 0].tolist() == [11, 12, 9, 10] and int(holder.exemplar_slot.numpy()) == 2


def test_the_exemplar_density_is_the_mixture_of_its_stored_codes_with_one_bandwidth_per_dimension():
    from keras_vae.priors import gaussian_mixture

    rng = np.random.default_rng(0)
    loc, points = rng.normal(size=(7, 5)), rng.normal(size=(4, 5)) * 2
    bandwidth = rng.uniform(0.3, 2.0, size=5)  # unequal: a bandwidth on the wrong axis or summed wrongly shows
    logits = rng.normal(size=7)
    direct = mixture_log_density_direct(points, logits, loc, np.broadcast_to(bandwidth, loc.shape))
    shared = gaussian_mixture(logits, loc, bandwidth).log_prob(points)  # the [L] scale's own expansion
    np.testing.assert_allclose(shared, direct, rtol=1e-10)
    np.testing.assert_allclose(gaussian_mixture(logits, loc, np.broadcast_to(bandwidth, loc.shape)).log_prob(points),
                               shared, rtol=1e-10)


def exemplar_nvae(components):
    keras.utils.set_random_seed(0)  # the same weights whatever ran before in this worker process
    return untrained_nvae(top_prior="exemplar", top_prior_components=components, spectral_reg=0.0)


def test_an_exemplar_top_prior_scores_each_training_batch_against_the_codes_stored_before_it_then_stores_it():
    """The memory starts at N(0, I) (zeros, unit bandwidth); a training pass scores its draws against what is
    stored, then stores the block's whitened posterior means at those draws in place of the oldest codes; an
    evaluation pass stores nothing."""
    from keras_vae.models.nvae import flat, whitened
    from keras_vae.priors import exemplar_bandwidth

    model = exemplar_nvae(8)
    assert any(v is model.prior_log_bandwidth for v in model.trainable_weights)
    assert not any(v is model.prior_loc or v is model.exemplar_slot for v in model.trainable_weights)
    x = tf.constant((tiny_images(12) / 255).astype(np.float32))
    model.noise_seed = lambda: tf.constant([1, 2], tf.int64)  # the draws of every pass below: rebuilt here
    seeds = split_seeds(tf.constant([1, 2], tf.int64), model.plan.num_groups)

    def block(batch):  # the training pass's draws and the block's means at them (batch statistics, as training)
        _, trace = model.walk(batch, lambda g, q: q.sample(seed=seeds[g]), training=True)
        means = flat([(q.mean() - p.mean()) / p.stddev() for p, q, _ in trace[:2]])
        return whitened(trace[:2]).numpy(), means.numpy()

    def direct_ratio(code, memory, bandwidth):
        dim = code.shape[1]
        return (mixture_log_density_direct(code, np.zeros(len(memory)), memory, np.broadcast_to(bandwidth, memory.shape))
                - mixture_log_density_direct(code, np.zeros(1), np.zeros((1, dim)), np.ones((1, dim))))

    terms = model.compute_terms(x[:6], training=True)
    analytic = sum(terms[f"kl_{g}"] for g in range(4))
    np.testing.assert_allclose(terms["kl"], analytic, atol=1e-4)  # zeros and unit bandwidth: N(0, I) exactly
    code, means = block(x[:6])
    np.testing.assert_allclose(model.prior_loc.numpy()[:6], means, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.prior_loc.numpy()[6:], 0)
    assert int(model.exemplar_slot.numpy()) == 6 and np.abs(means).max() > 0.01
    # Far from this untrained encoder's codes (all near 0): a pass that stored its batch before scoring it
    # would find its own codes in the memory and score far higher.
    model.prior_loc.assign(model.prior_loc.numpy() + 3.0)
    model.prior_log_bandwidth.assign(np.full(model.mixture_dim, np.log(0.8), np.float32))
    before = model.prior_loc.numpy()
    code, means = block(x[6:])
    bandwidth = exemplar_bandwidth(model).numpy()  # 0.8, plus the floor
    expected = direct_ratio(code, before, bandwidth)
    after = before.copy()
    after[[6, 7, 0, 1, 2, 3]] = means
    assert np.all(direct_ratio(code, after, bandwidth) - expected > 50)
    terms = tf.function(lambda batch: model.compute_terms(batch, training=True))(x[6:])  # traced, as training runs
    np.testing.assert_allclose(sum(terms[f"kl_{g}"] for g in range(4)) - terms["kl"], expected, rtol=1e-4, atol=1e-2)
    stored = model.prior_loc.numpy()
    np.testing.assert_allclose(stored[[6, 7, 0, 1, 2, 3]], means, rtol=1e-4, atol=1e-5)  # wrapped round
    np.testing.assert_array_equal(stored[4:6], before[4:6])  # the two newest of the first batch stay
    assert int(model.exemplar_slot.numpy()) == 4
    model.compute_terms(x[:6])  # evaluation
    np.testing.assert_array_equal(model.prior_loc.numpy(), stored)
    assert int(model.exemplar_slot.numpy()) == 4


def test_the_elbo_trains_an_exemplar_priors_bandwidth_towards_its_codes():
    """Steps on the ELBO (moving the bandwidth alone) from a bandwidth far too
    wide (e, where this untrained encoder's draws spread about 1 around the stored means) narrow it in every
    dimension and raise the prior's density of the draws: the prior learns from the same objective as the model."""
    model = exemplar_nvae(16)
    x = tf.constant((tiny_images(16) / 255).astype(np.float32))
    model.compute_terms(x, training=True)  # these images' codes stored
    model.prior_log_bandwidth.assign(np.ones(model.mixture_dim, np.float32))
    before, after = prior_density_under_elbo_steps(model, [model.prior_log_bandwidth], 0.1, 5, x)
    assert after > before + 10
    assert np.all(model.prior_log_bandwidth.numpy() < 0.75)  # narrowed at every step, in every dimension


def test_an_exemplar_top_prior_draws_a_stored_code_plus_its_bandwidth_times_t_and_is_saved(tmp_path):
    from keras_vae.explore import resampled_codes
    from keras_vae.export import save_keras_model
    from keras_vae.priors import exemplar_bandwidth

    model = exemplar_nvae(4)
    dim, size0 = model.mixture_dim, model.plan.group_sizes()[0]
    memory = np.repeat(np.array([[-6.0], [-2.0], [2.0], [6.0]], np.float32), dim, axis=1)
    model.prior_loc.assign(memory)
    model.exemplar_slot.assign(3)
    model.prior_log_bandwidth.assign(np.full(dim, np.log(0.5), np.float32))
    seed = tf.constant([3, 0], tf.int64)
    codes = model.sample_codes(4000, seed, temperature=0.5).numpy()
    top, below = codes[:, :dim], codes[:, dim:]
    component = np.digitize(top[:, 0], [-4.0, 0.0, 4.0])  # the stored codes are 16 spreads apart
    np.testing.assert_allclose(np.bincount(component, minlength=4) / 4000, 0.25, atol=0.03)  # equal weights
    residual = top - memory[component]  # every dimension follows its row's stored code
    assert abs(np.std(residual) - 0.25) < 0.01 and abs(np.mean(residual)) < 0.01  # the bandwidth times T
    assert abs(np.std(below) - 0.5) < 0.01
    # Resampling with the top group kept draws the second group at the stored code the kept group lies at.
    loc = np.zeros((8, model.code_dim), np.float32)
    loc[:, :size0] = memory[np.arange(8) % 4, :size0]
    noise = np.random.default_rng(0).standard_normal(loc.shape).astype(np.float32)
    second = resampled_codes(model, loc, noise, 1)[:, size0:dim]
    bandwidth = exemplar_bandwidth(model).numpy()[size0:]  # 0.5, plus the floor
    np.testing.assert_allclose(second, memory[np.arange(8) % 4, size0:] + bandwidth * noise[:, size0:dim], rtol=1e-5)
    # Saved and loaded: the memory, its slot and the bandwidth; a traced graph draws as eagerly.
    save_keras_model(model, str(tmp_path / "model.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_array_equal(loaded.prior_loc.numpy(), memory)
    assert int(loaded.exemplar_slot.numpy()) == 3
    eager = model.sample_codes(8, seed, 0.5).numpy()
    np.testing.assert_array_equal(loaded.sample_codes(8, seed, 0.5), eager)
    traced = tf.function(lambda s, t: model.sample_codes(8, s, t))
    np.testing.assert_allclose(traced(seed, tf.constant(0.5)), eager, rtol=1e-6)


def test_an_exemplar_top_prior_names_its_groups_and_a_contrastive_prior_covers_them():
    with pytest.raises(UserError, match="--top-prior-groups must be at most the 4 groups"):
        untrained_nvae(top_prior="exemplar", top_prior_groups=5)
    model = untrained_nvae(top_prior="exemplar", top_prior_components=2)
    assert model.default_contrastive_groups() == model.mixture_groups == 2
    with pytest.raises(UserError, match="covers its top 2 groups, so --top-groups must be 2 .* top_groups=1"):
        model.with_contrastive_prior(1)
    assert model.with_contrastive_prior(2).top_dim == model.mixture_dim


# ------------------------------------------------------------------ an autoregressive top prior, trained with the model
def autoregressive_nvae(head_scale=0.0, **switches):
    """An untrained 4-group NVAE whose autoregressive top prior (over the top 2 groups, 4×4×2 each) has a random
    last layer of `head_scale` (0: as built, near N(0, I))."""
    from keras_vae.spatial_prior import head_of

    keras.utils.set_random_seed(0)  # the same weights whatever ran before in this worker process
    model = untrained_nvae(top_prior="autoregressive", top_prior_components=3, top_prior_filters=8, spectral_reg=0.0,
                           **switches)
    rng = np.random.default_rng(1)
    for network in model.top_networks:
        head = head_of(network)
        head.kernel.assign(rng.normal(0.0, head_scale, head.kernel.shape).astype(np.float32))
    return model


def test_an_autoregressive_top_prior_scores_the_top_groups_maps_and_enters_the_kl_by_monte_carlo():
    from keras_vae import spatial_prior
    from keras_vae.models.nvae import whitened

    model = autoregressive_nvae(head_scale=1.0)
    plain = untrained_nvae(spectral_reg=0.0)
    # The spectral penalty covers the NVAE's convolutions, not the prior's PixelCNNs.
    assert len(model.convolutions()) == len(plain.convolutions())
    assert model.mixture_groups == 2  # every group but the finest scale's
    x = tf.constant((tiny_images(6) / 255).astype(np.float32))
    seeds = split_seeds(tf.constant([1, 2]), model.plan.num_groups)
    _, trace = model.walk(x, lambda g, q: q.sample(seed=seeds[g]))
    code = whitened(trace[:2]).numpy()
    maps = [part.reshape(-1, *model.plan.group_shape(g)) for g, part in enumerate(np.split(code, [model.plan.group_sizes()[0]], 1))]
    direct = (spatial_prior.log_prob(model.top_networks, model.top_shapes(), 3, maps).numpy()
              + 0.5 * (code ** 2).sum(1) + 0.5 * code.shape[1] * np.log(2 * np.pi))
    assert np.all(np.abs(direct) > 5)
    np.testing.assert_allclose(model.prior_log_ratio(trace), direct, rtol=1e-4, atol=1e-3)
    terms = model.compute_terms(x)
    analytic = sum(terms[f"kl_{g}"] for g in range(4))
    assert np.all(np.abs(terms["kl"] - analytic) > 1)  # the prior's term is there
    np.testing.assert_allclose(terms["kl_units"].numpy().sum(1), terms["kl"], rtol=1e-5)
    assert terms["kl_units"].shape == (6, 3)  # the block as one unit, then each group below


def test_per_group_units_split_an_autoregressive_priors_kl_by_group_and_free_bits_floor_each():
    """With `top_prior_per_group`, each group of the block is a unit of its own, KL_g − (log p(ε_g | ε_<g) −
    log N(ε_g; 0, I)) at the draw, the prior's density taken group by group (the groups' terms sum to its
    log-density); the units still sum to the ELBO's KL, and free bits floor each group's batch mean apart."""
    from keras_vae import spatial_prior
    from keras_vae.models.nvae import whitened_maps

    model = autoregressive_nvae(head_scale=1.0, top_prior_per_group=True, kl_balance=False, group_free_bits=20.0)
    assert model.kl_unit_sizes() == model.plan.group_sizes()
    x = tf.constant((tiny_images(6) / 255).astype(np.float32))
    walks, walk = [], model.walk
    model.walk = lambda *args, **kwargs: walks.append(walk(*args, **kwargs)) or walks[-1]
    terms = model.compute_terms(x)
    trace = walks[0][1]
    maps = [m.numpy() for m in whitened_maps(trace[:2])]
    by_group = spatial_prior.group_log_probs(model.top_networks, model.top_shapes(), 3, maps).numpy()
    # The top group alone, by its own network; the second given the first, position by position.
    np.testing.assert_allclose(by_group[:, 0], spatial_prior.log_prob(model.top_networks[:1], model.top_shapes()[:1],
                                                                       3, maps[:1]), rtol=1e-5)
    mixture = spatial_prior.position_mixture(spatial_prior.network_params(model.top_networks[1], maps, 1,
                                                                          model.top_shapes()[1]), 2, 3)
    np.testing.assert_allclose(by_group[:, 1], mixture.log_prob(maps[1]).numpy().sum((1, 2)), rtol=1e-5)
    normal = np.stack([-0.5 * (m ** 2).reshape(6, -1).sum(1) - 0.5 * m[0].size * np.log(2 * np.pi) for m in maps], 1)
    ratios = by_group - normal
    assert np.all(np.abs(ratios) > 1)
    np.testing.assert_allclose(model.group_log_ratios(trace), ratios, rtol=1e-4, atol=1e-3)
    units = terms["kl_units"].numpy()
    assert units.shape == (6, 4)
    for g in range(4):
        np.testing.assert_allclose(units[:, g], terms[f"kl_{g}"].numpy() - (ratios[:, g] if g < 2 else 0),
                                   rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(units.sum(1), terms["kl"], rtol=1e-5)
    # KL balancing weighs each group of the block by its own share and size.
    model.compile(optimizer=keras.optimizers.Adamax(1e-3))
    gamma = (np.abs(units).mean(0) + 0.01) / (np.array(model.plan.group_sizes()) / min(model.plan.group_sizes()))
    np.testing.assert_allclose(balanced_kl(terms["kl_units"], model.kl_unit_sizes(), tf.constant(True)),
                               units @ (gamma / gamma.mean()), rtol=1e-4)
    # Free bits floor each group's batch mean at 20 nats, not the block's sum.
    means = units.mean(0)
    np.testing.assert_allclose(model.regularizer(terms, 1.0), np.maximum(means, 20.0).sum(), rtol=1e-5)
    block = max(means[:2].sum(), 20.0) + np.maximum(means[2:], 20.0).sum()
    assert abs(np.maximum(means, 20.0).sum() - block) > 1  # one top group below the floor: the test tells them apart
    with pytest.raises(UserError, match="splits an autoregressive top prior's KL by group"):
        untrained_nvae(top_prior="mog", top_prior_components=2, top_prior_per_group=True)


@pytest.mark.parametrize("per_group", [False, True])
def test_a_floored_autoregressive_prior_still_fits_the_codes(per_group):
    """Free bits set a floored unit's value to the floor, which stops the posterior's gradient, but the learned
    prior's weights get the gradient they get unfloored: that of −log p(ε_top) at the same draws."""
    def regularizer_and_prior_gradient(floor):
        model = autoregressive_nvae(head_scale=1.0, kl_balance=False, group_free_bits=floor,
                                    top_prior_per_group=per_group)
        model.compile(optimizer=keras.optimizers.Adamax(1e-3))
        variables = [v for network in model.top_networks for v in network.trainable_weights]
        with tf.GradientTape() as tape:
            terms = model.compute_terms(tf.constant((tiny_images(6) / 255).astype(np.float32)), training=True)
            regularizer = model.regularizer(terms, 1.0)
        return model, float(regularizer), [g.numpy() for g in tape.gradient(regularizer, variables)]

    free_model, _, free = regularizer_and_prior_gradient(0.0)
    floored_model, value, floored = regularizer_and_prior_gradient(1000.0)
    assert value == pytest.approx(1000.0 * len(floored_model.kl_unit_sizes()))  # every unit floored
    assert sum(np.abs(g).sum() for g in floored) > 1.0
    for a, b in zip(free, floored):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_the_elbo_trains_an_autoregressive_top_prior_towards_the_codes():
    """Steps on the ELBO alone (through `compute_terms`' Monte-Carlo KL), moving only the prior's networks,
    raise its density of the posterior's draws, from a prior set far from them (every position at N(2, 0.5²))."""
    from keras_vae.spatial_prior import SOFTPLUS_ONE, head_of

    model = autoregressive_nvae()
    for network in model.top_networks:  # 3 components over 2 channels: 3 logits, 6 means, 6 raw scales
        raw = np.log(np.expm1(0.5 - 1e-4)) - SOFTPLUS_ONE
        head_of(network).bias.assign(np.array([0.0] * 3 + [2.0] * 6 + [raw] * 6, np.float32))
    variables = [v for network in model.top_networks for v in network.trainable_weights]
    assert all(any(v is w for w in model.trainable_weights) for v in variables)
    x = tf.constant((tiny_images(16) / 255).astype(np.float32))
    before, after = prior_density_under_elbo_steps(model, variables, 0.02, 8, x)
    assert before < -100
    assert after > before + 5


def test_an_autoregressive_top_prior_draws_as_its_density_reads_resamples_whole_groups_and_is_saved(tmp_path):
    from keras_vae import spatial_prior
    from keras_vae.explore import resampled_codes
    from keras_vae.export import save_keras_model
    from keras_vae.models.vae import VAE

    model = autoregressive_nvae(head_scale=1.0)
    dim, size0 = model.mixture_dim, model.plan.group_sizes()[0]
    seed = tf.constant([3, 0], tf.int64)
    codes = model.sample_codes(6, seed, temperature=0.5).numpy()
    base = VAE.sample_codes(model, 6, seed, 1.0)  # ε ~ N(0, I): the noise of the same draw
    np.testing.assert_allclose(codes[:, dim:], 0.5 * base.numpy()[:, dim:], rtol=1e-5)  # N(0, T² I) below the block
    maps = model.plan.split_code(tf.constant(codes))[:2]
    for g in range(2):  # each value is one component's loc + scale · T · ε, the components read by teacher forcing
        mixture = spatial_prior.position_mixture(
            spatial_prior.network_params(model.top_networks[g], maps, g, model.top_shapes()[g]), 2, 3)
        normal = mixture.components_distribution.distribution
        part = 0.5 * model.plan.split_code(base)[g].numpy()[..., None, :]
        value = maps[g].numpy()[..., None, :]
        match = np.all(np.abs(normal.loc.numpy() + normal.scale.numpy() * part - value) < 1e-4, -1)  # [6, h, w, M]
        assert match.any(-1).all(), g
    # Resampling keeps whole top groups and draws the ones below given them; part of a group is refused.
    rng = np.random.default_rng(0)
    loc, noise = rng.normal(size=(4, model.code_dim)).astype(np.float32), rng.normal(size=(4, model.code_dim)).astype(np.float32)
    one = resampled_codes(model, loc, noise, 1)
    np.testing.assert_array_equal(one[:, :size0], loc[:, :size0])
    np.testing.assert_array_equal(one[:, dim:], noise[:, dim:])
    given = spatial_prior.draws(model.top_networks, model.top_shapes(), 3, noise[:, :dim], tf.constant([0, 1], tf.int64),
                                given=model.plan.split_code(tf.constant(loc))[:1])
    np.testing.assert_allclose(one[:, size0:dim], given[1].numpy().reshape(4, -1), rtol=1e-5, atol=1e-6)
    kept = np.zeros(model.code_dim, bool)
    kept[:size0 + 1] = True
    with pytest.raises(ValueError, match="whole groups below the kept ones"):
        model.redraw_dropped(loc, kept, noise)
    # Saved and loaded; a traced graph (as the `sample` signature runs) draws as eagerly.
    save_keras_model(model, str(tmp_path / "model.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(loaded.sample_codes(6, seed, 0.5), codes, rtol=1e-5, atol=1e-5)
    traced = tf.function(lambda s, t: model.sample_codes(6, s, t))
    np.testing.assert_allclose(traced(seed, tf.constant(0.5)), codes, rtol=1e-5, atol=1e-5)  # float noise carried down the positions


def test_an_autoregressive_top_prior_is_served_by_tensor_name_in_a_v1_session(tmp_path):
    """The export's `sample` runs the position-by-position draws (a while loop around the PixelCNNs) as the
    model draws them, and `score` adds the prior's exact log-density, read as TF Serving reads the SavedModel."""
    from keras_vae import losses
    from keras_vae.export import export_saved_model
    from keras_vae.serving import SCORE_SAMPLES, _SCORE_SEED

    keras.utils.set_random_seed(0)
    model = build_model(config_for("nvae", channels=8, latent_channels=2, groups_per_scale=1, kl_warmup_steps=0,
                                   top_prior="autoregressive", top_prior_components=2, top_prior_filters=4,
                                   top_prior_groups=1, seed=5), (28, 28, 1))
    path = export_saved_model(model, str(tmp_path), "nvae")
    x = (tiny_images(3) / 255).astype(np.float32)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        signatures = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def

        def run(name, feeds):
            info = signatures[name]
            return session.run({k: t.name for k, t in info.outputs.items()},
                               {info.inputs[k].name: v for k, v in feeds.items()})

        sample = run("sample", {"num_samples": np.int32(4), "seed": np.int32(11), "temperature": np.float32(0.8)})
        score = run("score", {"x": x})
    x_mean, z = model.sample(4, seed=11, temperature=0.8)
    np.testing.assert_allclose(sample["z"], z, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sample["x_mean"], x_mean, rtol=1e-4, atol=1e-4)
    log_weights, elbo = model.importance_log_weights(tf.constant(x), SCORE_SAMPLES, seed=_SCORE_SEED)
    np.testing.assert_allclose(score["log_px_iw"], losses.iwae_bound(log_weights), rtol=1e-4)
    np.testing.assert_allclose(score["elbo"], elbo, rtol=1e-4)


# ------------------------------------------------------------------ resampling the groups below
def test_the_group_mask_marks_the_kept_groups_dimensions():
    from keras_vae.explore import group_mask

    np.testing.assert_array_equal(group_mask([2, 3, 1], {0, 2}), [True, True, False, False, False, True])
    assert not group_mask([4], set()).any()


def test_resampled_codes_keep_the_top_groups_in_the_order_each_hierarchy_draws_them(nvae):
    from keras_vae.explore import resampled_codes

    model, _ = nvae
    sizes = model.plan.group_sizes()  # the NVAE's code holds its groups top first
    loc, noise = np.ones((2, model.code_dim), np.float32), np.zeros((2, model.code_dim), np.float32)
    for keep in range(len(sizes) + 1):
        code = resampled_codes(model, loc, noise, keep)
        assert np.all(code[:, :sum(sizes[:keep])] == 1) and np.all(code[:, sum(sizes[:keep]):] == 0), keep
    hvae = build_model(config_for("hvae", latent_dim=3), (28, 28, 1))  # its code is [ε1, z2]: z2 is drawn first
    loc, noise = np.ones((2, 6), np.float32), np.zeros((2, 6), np.float32)
    np.testing.assert_array_equal(resampled_codes(hvae, loc, noise, 1)[0], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(resampled_codes(hvae, loc, noise, 2)[0], np.ones(6))


def grid_rows(grid, rows, columns, size=28, pad=2):
    """The cells of a `make_grid` picture as [rows, columns, size, size, 1]."""
    step = size + pad
    return np.array([[grid[pad + r * step: pad + r * step + size, pad + c * step: pad + c * step + size]
                      for c in range(columns)] for r in range(rows)])


def test_resample_rows_run_from_the_reconstruction_to_samples_that_ignore_the_image(nvae):
    """Row 0 the images; row 1 keeps every group (the reconstruction); each next row draws one more group
    from its prior; the last row draws them all, whatever the image. The same noise serves every row."""
    from keras_vae.explore import resample_grid

    model, x = nvae
    groups = model.plan.num_groups
    grid = resample_grid(model, x[:3], seed=1)
    rows = grid_rows(grid, groups + 2, 3)
    np.testing.assert_allclose(rows[0], x[:3], atol=1e-6)
    np.testing.assert_allclose(rows[1], model.reconstruct(x[:3]).numpy(), atol=1e-5)
    other = grid_rows(resample_grid(model, x[3:6], seed=1), groups + 2, 3)
    np.testing.assert_allclose(other[-1], rows[-1], atol=1e-6)  # samples: the images do not reach them
    for r in range(2, groups + 1):  # a kept group still carries the image
        assert np.abs(other[r] - rows[r]).max() > 1e-3, r
    reseeded = grid_rows(resample_grid(model, x[:3], seed=2), groups + 2, 3)
    np.testing.assert_allclose(reseeded[1], rows[1], atol=1e-6)  # nothing drawn
    for r in range(2, groups + 2):  # each row draws a group more than the one above it: the noise reaches it
        assert np.abs(reseeded[r] - rows[r]).max() > 1e-3, r


def test_resample_from_the_command_line(nvae, tmp_path):
    from PIL import Image

    model, x = nvae
    np.savez(tmp_path / "tiny.npz", x=(x * 255).astype(np.uint8))
    config = config_for("nvae", kl_warmup_steps=0, channels=16, latent_channels=4, seed=3,
                        dataset=str(tmp_path / "tiny.npz"))
    (tmp_path / "run").mkdir()
    config.save(str(tmp_path / "run" / "config.json"))
    model.save(str(tmp_path / "run" / "model.keras"))
    result = invoke("resample", tmp_path / "run", "--out", tmp_path / "r.png", "--num", 3)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "r.png").size == (3 * 30 + 2, (model.plan.num_groups + 2) * 30 + 2)
    result = invoke("resample", tmp_path / "run", "--out", tmp_path / "r.png", "--temperature", -1)
    assert result.exit_code == 2 and "--temperature must be positive" in result.output
