"""The contrastive prior (keras_vae.contrastive_prior): SIR against an exponentially tilted normal, the
classifier's log-ratio against a closed form, the NVAE's plumbing (samples, likelihoods, save and load), and
`keras-vae fit-prior --method contrastive` end to end, down to a TF1-session export."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import config_for, invoke, untrained_vae_run
from keras_vae import contrastive_prior
from keras_vae.errors import UserError
from keras_vae.models import build_model


def tilt(direction):
    """log r(ε) = a·ε: N(0, T² I)·r / Z is N(T² a, T² I), and log Z over N(0, I) is |a|²/2."""
    direction = tf.constant(direction, tf.float32)
    return lambda code: tf.linalg.matvec(code, direction)


# ------------------------------------------------------------------ the pure functions
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sir_draws_from_a_tilted_normal_are_the_shifted_normal(temperature):
    a = np.array([1.0, -0.5, 0.0], np.float32)
    draws = contrastive_prior.sir_draws(tilt(a), 2003, 3, tf.constant([4, 2], tf.int64), temperature).numpy()
    assert draws.shape == (2003, 3)  # not a multiple of the chunk: the padding is cut
    stderr = temperature / math.sqrt(len(draws))
    np.testing.assert_allclose(draws.mean(0), temperature**2 * a, atol=5 * stderr)
    np.testing.assert_allclose(draws.std(0), temperature, rtol=0.08)
    again = contrastive_prior.sir_draws(tilt(a), 2003, 3, tf.constant([4, 2], tf.int64), temperature).numpy()
    np.testing.assert_array_equal(draws, again)  # stateless in the seed
    other = contrastive_prior.sir_draws(tilt(a), 2003, 3, tf.constant([4, 3], tf.int64), temperature).numpy()
    assert np.abs(other - draws).max() > 0.1


def test_sir_draws_propose_from_a_given_base_and_tilt_it():
    """Proposals from a base N(m, I) (a learned prior's stand-in): with log r(ε) = a·ε, p_b·r / Z is N(m + a, I)."""
    m, a = np.array([2.0, -1.0], np.float32), np.array([0.5, 0.0], np.float32)
    propose = (lambda count, seed: m + tf.random.stateless_normal([count, 2], seed=seed))
    draws = contrastive_prior.sir_draws(tilt(a), 2000, 2, tf.constant([1, 2], tf.int64), propose=propose).numpy()
    np.testing.assert_allclose(draws.mean(0), m + a, atol=5 / math.sqrt(len(draws)))
    np.testing.assert_allclose(draws.std(0), 1.0, rtol=0.08)


def test_the_log_normalizer_and_the_effective_sample_size_match_their_closed_forms():
    a = np.array([1.0, -0.5, 0.0])
    log_ratios = contrastive_prior.noise_log_ratios(tilt(a), 200_500, 3, np.random.default_rng(0))
    log_z, ess = contrastive_prior.log_normalizer_and_sample_size(log_ratios)
    assert log_z == pytest.approx(0.5 * a @ a, abs=0.02)  # E[exp(a·ε)] = exp(|a|²/2)
    # SIR's 1,000 proposals weighted by w = exp(a·ε): (Σ w)² / Σ w² ≈ 1000 (E w)² / E w² = 1000 exp(−|a|²).
    assert ess == pytest.approx(1000 * np.exp(-a @ a), rel=0.1)
    with pytest.raises(ValueError, match="at least 1000 log-ratios .* Received: 999"):
        contrastive_prior.log_normalizer_and_sample_size(log_ratios[:999])
    assert float(contrastive_prior.log_normalizer(tf.fill([10], 2.0))) == pytest.approx(2.0)
    ess = contrastive_prior.effective_sample_size(tf.constant([[0.0] * 8, [0.0, -50.0, -50.0, -50.0] * 2]))
    np.testing.assert_allclose(ess, [8.0, 2.0], rtol=1e-6)


def test_the_contrastive_loss_is_least_at_the_log_ratio():
    """For q = N(μ, 1) against N(0, 1) the loss at D = log q/p is 2 log 2 − 2 JS; any other D does worse."""
    rng = np.random.default_rng(0)
    mu = 1.0
    positives, negatives = rng.normal(mu, 1, 200000), rng.normal(0, 1, 200000)
    log_ratio = (lambda e: mu * e - mu**2 / 2)
    best = float(contrastive_prior.contrastive_loss(log_ratio(positives), log_ratio(negatives)))
    for wrong in (lambda e: 0.5 * log_ratio(e), lambda e: log_ratio(e) + 0.5, lambda e: 0 * e):
        assert float(contrastive_prior.contrastive_loss(wrong(positives), wrong(negatives))) > best + 1e-3


def test_the_ratio_network_upsamples_each_group_to_the_finest_and_stacks_them():
    network = contrastive_prior.RatioNetwork([(1, 1, 2), (2, 2, 1)])
    code = tf.constant([[10.0, 20.0, 1.0, 2.0, 3.0, 4.0]])
    maps = network.maps(code).numpy()[0]  # [2, 2, 3]
    np.testing.assert_array_equal(maps[..., 0], np.full((2, 2), 10.0))
    np.testing.assert_array_equal(maps[..., 1], np.full((2, 2), 20.0))
    np.testing.assert_array_equal(maps[..., 2], [[1.0, 2.0], [3.0, 4.0]])
    assert network(code).shape == (1,)
    with pytest.raises(ValueError, match="Received: group_shapes"):
        contrastive_prior.RatioNetwork([])


def test_the_classifier_learns_the_log_ratio_of_a_shifted_normal():
    """Trained on draws of q = N(μ, I) against N(0, I), the logit approaches log q/p = μ·ε − |μ|²/2; the
    held-out codes' mean log r − log Z approaches KL(q ‖ p) = |μ|²/2, and log Z approaches 0."""
    rng = np.random.default_rng(1)
    mu = np.array([0.8, 0.0, 0.0, -0.8], np.float32)
    positives = (mu + rng.standard_normal((20000, 4))).astype(np.float32)
    held_out = (mu + rng.standard_normal((2000, 4))).astype(np.float32)
    network = contrastive_prior.RatioNetwork([(2, 2, 1)], width=32, depth=1)
    keras.utils.set_random_seed(0)
    history = contrastive_prior.fit_ratio(network, positives, held_out, epochs=4, batch_size=256,
                                          learning_rate=3e-3, seed=0)
    assert len(history["val_loss"]) == 4 and history["val_loss"][history["best_epoch"] - 1] == min(history["val_loss"])
    points = rng.standard_normal((4000, 4)).astype(np.float32) + rng.integers(0, 2, (4000, 1)) * mu
    learned, exact = network(points).numpy(), points @ mu - mu @ mu / 2
    assert np.corrcoef(learned, exact)[0, 1] > 0.97
    assert np.mean(np.abs(learned - exact)) < 0.15
    log_z, _ = contrastive_prior.log_normalizer_and_sample_size(
        contrastive_prior.noise_log_ratios(network, 100_000, 4, np.random.default_rng(2)))
    assert abs(log_z) < 0.1
    assert float(np.mean(network(held_out).numpy())) - log_z == pytest.approx(mu @ mu / 2, abs=0.1)


def test_the_classifiers_training_stops_once_the_held_out_loss_stops_falling():
    """With a zero learning rate the held-out loss never falls after the first epoch: training stops
    PATIENCE epochs later, keeping the first epoch's weights."""
    rng = np.random.default_rng(2)
    codes = rng.standard_normal((512, 4)).astype(np.float32)
    network = contrastive_prior.RatioNetwork([(2, 2, 1)], width=8, depth=1)
    history = contrastive_prior.fit_ratio(network, codes, codes[:64], epochs=50, batch_size=128, learning_rate=0.0,
                                          seed=0)
    assert history["best_epoch"] == 1 and len(history["val_loss"]) == 1 + contrastive_prior.PATIENCE
    assert len(set(history["val_loss"])) == 1


# ------------------------------------------------------------------ the NVAE's plumbing
@pytest.fixture(scope="module")
def nvae_pair():
    config = config_for("nvae", kl_warmup_steps=0, channels=16, latent_channels=4, seed=3)
    model = build_model(config, (28, 28, 1))
    contrast = model.with_contrastive_prior(2)
    return model, contrast


def constant_ratio(model, value, log_z):
    """Sets the classifier's output to `value` everywhere and log Z to `log_z`."""
    out = model.contrast.out
    out.kernel.assign(tf.zeros_like(out.kernel))
    out.bias.assign(tf.fill(out.bias.shape, value))
    model.contrast_log_normalizer.assign(log_z)


def weights_but_the_prior(model):
    """A contrastive model's weights other than its classifier's and log Z, in order."""
    own = {id(v) for v in [*model.contrast.weights, model.contrast_log_normalizer]}
    return [v for v in model.weights if id(v) not in own]


def test_the_contrastive_copy_keeps_every_weight_and_adds_only_the_classifier(nvae_pair):
    model, contrast = nvae_pair
    kept = weights_but_the_prior(contrast)
    assert len(kept) == len(model.weights) and len(contrast.weights) == len(kept) + len(contrast.contrast.weights) + 1
    for old, new in zip(model.weights, kept):
        np.testing.assert_array_equal(old.numpy(), new.numpy())
    assert len(contrast.power_vectors) == len(model.power_vectors)  # the spectral penalty skips the classifier
    assert contrast.top_dim == 2 * 4 * 4 * 4 and model.default_contrastive_groups() == 2
    with pytest.raises(UserError, match="1 to 4 top groups .* Received: top_groups=5"):
        model.with_contrastive_prior(5)


def test_a_rebuild_that_changes_more_than_it_replaces_is_refused(nvae_pair):
    from keras_vae.models.base import rebuilt

    model, _ = nvae_pair
    with pytest.raises(RuntimeError, match="changed more than the weights it replaces"):
        rebuilt(model, lambda m: [], latent_channels=5)  # every group's head changes shape


def test_a_second_contrastive_prior_starts_from_a_fresh_classifier(nvae_pair):
    model, contrast = nvae_pair
    trained = contrast.with_contrastive_prior(2)
    trained.contrast.out.bias.assign([3.0])
    again = trained.with_contrastive_prior(1)
    assert again.contrastive_groups == 1 and again.top_dim == 4 * 4 * 4
    assert float(again.contrast.out.bias[0]) == 0.0  # not the first classifier's
    for old, new in zip(model.weights, weights_but_the_prior(again)):  # every other weight: the model's own
        np.testing.assert_array_equal(old.numpy(), new.numpy())


def test_the_likelihoods_add_the_log_ratio_at_the_posteriors_draw(nvae_pair):
    model, contrast = nvae_pair
    x = tf.constant(np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32))
    seed = tf.constant([7, 1])
    base, _ = model.importance_log_weights(x, 1, seed)
    # A random classifier, its output spread out, and log Z: the K = 1 weight gains log r − log Z at the
    # draw that `whitened_posterior_sample` makes with the same seed.
    contrast.contrast.out.kernel.assign(50 * tf.random.stateless_normal(contrast.contrast.out.kernel.shape, [1, 2]))
    contrast.contrast_log_normalizer.assign(0.7)
    with_ratio, _ = contrast.importance_log_weights(x, 1, seed)
    draws = contrast.whitened_posterior_sample(x, seed)[:, :contrast.top_dim]
    expected = contrast.contrast(draws).numpy() - 0.7
    assert np.std(expected) > 0.5  # the check can tell the images' draws apart
    np.testing.assert_allclose((with_ratio - base).numpy()[0], expected, atol=2e-3)
    # A constant ratio c: the ELBO's KL is Σ_l KL_l − (c − log Z) exactly.
    constant_ratio(contrast, 2.5, 0.5)
    terms = contrast.compute_terms(x)
    np.testing.assert_allclose(terms["kl"], tf.reduce_sum(terms["kl_units"], -1) - 2.0, rtol=1e-5)
    np.testing.assert_allclose(terms["elbo"], -(terms["reconstruction_loss"] + terms["kl"]), rtol=1e-6)


def test_samples_draw_the_top_groups_by_sir_and_the_rest_as_before(nvae_pair, tmp_path):
    model, contrast = nvae_pair
    constant_ratio(contrast, 0.0, 0.0)
    seed = tf.constant([5, 0], tf.int64)
    base, codes = model.sample_codes(40, seed).numpy(), contrast.sample_codes(40, seed).numpy()
    top = contrast.top_dim
    np.testing.assert_array_equal(codes[:, top:], base[:, top:])  # the groups below: the same draws
    sir = contrastive_prior.sir_draws(contrast.contrast, 40, top, seed).numpy()
    np.testing.assert_array_equal(codes[:, :top], sir)  # the top: SIR's choice, drawn with the same seed
    assert abs(codes[:, :top].mean()) < 0.05 and codes[:, :top].std() == pytest.approx(1.0, abs=0.05)
    np.testing.assert_array_equal(contrast.sample_codes(40, seed).numpy(), codes)
    # A classifier whose log-ratio varies by nats: SIR keeps proposals it scores far above N(0, I) draws.
    contrast.contrast.out.kernel.assign(50 * tf.random.stateless_normal(contrast.contrast.out.kernel.shape, [3, 4]))
    chosen = contrast.contrast(contrast.sample_codes(200, seed)[:, :top]).numpy()
    noise = contrast.contrast(tf.random.stateless_normal([2000, top], [8, 9])).numpy()
    assert np.std(noise) > 1 and chosen.mean() > noise.mean() + 2 * np.std(noise)
    path = tmp_path / "contrast.keras"
    contrast.save(str(path))
    loaded = keras.saving.load_model(str(path))
    assert loaded.contrastive_groups == 2
    np.testing.assert_array_equal(loaded.sample_codes(40, seed).numpy(), contrast.sample_codes(40, seed).numpy())


def autoregressive_pair():
    """An untrained 4-group NVAE whose autoregressive top prior (the top 2 groups) is far from N(0, I) (a random
    last layer), and its contrastive copy."""
    from keras_vae.spatial_prior import head_of

    keras.utils.set_random_seed(0)
    config = config_for("nvae", kl_warmup_steps=0, channels=16, latent_channels=4, seed=3, top_prior="autoregressive",
                        top_prior_components=3, top_prior_filters=8)
    model = build_model(config, (28, 28, 1))
    rng = np.random.default_rng(1)
    for network in model.top_networks:
        head = head_of(network)
        head.kernel.assign(rng.normal(0.0, 1.0, head.kernel.shape).astype(np.float32))
    return model, model.with_contrastive_prior(2)


def test_over_an_autoregressive_prior_the_ratio_adds_to_its_density_and_sir_proposes_its_draws():
    model, contrast = autoregressive_pair()
    top = contrast.top_dim
    assert top == model.mixture_dim == 2 * 4 * 4 * 4
    x = tf.constant(np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32))
    seed = tf.constant([7, 1])
    base, _ = model.importance_log_weights(x, 1, seed)  # with the autoregressive prior's density, as the copy's
    contrast.contrast.out.kernel.assign(50 * tf.random.stateless_normal(contrast.contrast.out.kernel.shape, [1, 2]))
    contrast.contrast_log_normalizer.assign(0.7)
    with_ratio, _ = contrast.importance_log_weights(x, 1, seed)
    draws = contrast.whitened_posterior_sample(x, seed)[:, :top]
    expected = contrast.contrast(draws).numpy() - 0.7
    assert np.std(expected) > 0.5
    np.testing.assert_allclose((with_ratio - base).numpy()[0], expected, atol=2e-3)
    # The proposals are the autoregressive prior's draws: SIR over them, with the seed sample_codes gives it
    # (one chunk of samples: each chunk's 16,000 proposals take a pass per position).
    sample_seed = tf.constant([5, 0], tf.int64)
    codes = contrast.sample_codes(16, sample_seed).numpy()
    sir = contrastive_prior.sir_draws(contrast.contrast, 16, top, sample_seed,
                                      propose=lambda count, s: contrast.trained_prior_codes(count, s)[:, :top]).numpy()
    np.testing.assert_array_equal(codes[:, :top], sir)
    np.testing.assert_array_equal(codes[:, top:], model.sample_codes(16, sample_seed).numpy()[:, top:])
    normal = contrastive_prior.sir_draws(contrast.contrast, 16, top, sample_seed).numpy()
    assert np.abs(normal - sir).max() > 0.1  # not N(0, I)'s proposals
    # With each group its own KL unit (--top-prior-per-group), the units sum to Σ_l KL_l − log p_top/N(0, I); the
    # ELBO's KL also takes the ratio: a constant c gives their sum − (c − log Z).
    per_group = build_model(config_for("nvae", kl_warmup_steps=0, channels=16, latent_channels=4, seed=3,
                                       top_prior="autoregressive", top_prior_components=3, top_prior_filters=8,
                                       top_prior_per_group=True), (28, 28, 1)).with_contrastive_prior(2)
    constant_ratio(per_group, 2.5, 0.5)
    terms = per_group.compute_terms(x)
    np.testing.assert_allclose(terms["kl"], tf.reduce_sum(terms["kl_units"], -1) - 2.0, rtol=1e-5)


def test_the_base_draws_of_a_fit_are_the_trained_prior_s():
    from keras_vae.code_prior import trained_top_prior_draws

    model, contrast = autoregressive_pair()
    draw = trained_top_prior_draws(contrast)
    seed = np.random.default_rng(3).integers(2**31, size=2)
    expected = contrast.trained_prior_codes(6, tf.constant(seed, tf.int64)).numpy()[:, :contrast.top_dim]
    np.testing.assert_allclose(draw(6, contrast.top_dim, np.random.default_rng(3)), expected, rtol=1e-6)
    normal_model = build_model(config_for("nvae", kl_warmup_steps=0, channels=16, latent_channels=4, seed=3),
                               (28, 28, 1)).with_contrastive_prior(2)
    assert trained_top_prior_draws(normal_model) is contrastive_prior.normal_draws


# ------------------------------------------------------------------ fit-prior, end to end
# A constant learning rate, so that training further is refused for the prior, not for a finished schedule.
NVAE_FLAGS = ("--model", "nvae", "--channels", 16, "--latent-channels", 4, "--kl-warmup-steps", 0, "--lr-schedule",
              "constant")

@pytest.fixture(scope="module")
def nvae_run(tiny_run):
    root, _ = tiny_run("nvae-contrast", *NVAE_FLAGS, "--no-export")  # fit-prior's export is its first version
    result = invoke("fit-prior", root / "run", "--method", "contrastive", "--epochs", 3, "--batch-size", 32)
    assert result.exit_code == 0, result.output
    return root, result.output


def test_fit_prior_gives_an_nvae_a_contrastive_prior_that_sampling_and_exports_use(nvae_run):
    from keras_vae import runs
    from test_export import run_in_session

    root, output = nvae_run
    assert "The top 2 groups' prior (128 dimensions) is reweighted" in output
    assert "exports/nvae-contrast/1" in output
    record = json.loads((root / "run" / runs.CONTRASTIVE_PRIOR_FILE).read_text())
    assert record["groups"] == 2 and record["dimensions"] == 128 and len(record["history"]["val_loss"]) == 3
    assert record["normalizer_draws"] == contrastive_prior.NORMALIZER_DRAWS
    assert 1 <= record["effective_sample_size"] <= contrastive_prior.PROPOSALS
    _, model = runs.load_run(str(root / "run"))
    assert model.contrastive_groups == 2
    assert float(model.contrast_log_normalizer) == pytest.approx(record["log_normalizer"], abs=1e-5)
    from keras_vae.evaluate import fixed_noise_elbo
    from keras_vae.data.splits import load_split

    test = load_split(runs.load_run(str(root / "run"))[0], "test")
    assert fixed_noise_elbo(model, test) == pytest.approx(record["test_elbo_after"], abs=1e-3)
    x_mean, _ = model.sample(5, seed=11)
    served = run_in_session(str(root / "exports" / "nvae-contrast" / "1"), lambda name: {
        "sample": {"num_samples": np.int32(5), "seed": np.int32(11), "temperature": np.float32(1.0)},
        "decode": {"z": np.zeros((2, model.code_dim), np.float32)}}.get(name, {"x": test.x[:3]}))
    np.testing.assert_allclose(served["sample"]["x_mean"], np.asarray(x_mean), atol=1e-4)
    result = invoke("sample", root / "run", "--out", root / "s.png", "--num", 4)
    assert result.exit_code == 0 and (root / "s.png").exists(), result.output


def test_training_further_after_a_contrastive_prior_is_refused(nvae_run):
    root, _ = nvae_run
    result = invoke("fit", "--dataset", root / "tiny.npz", "--epochs", 3, "--batch-size", 32, "--run-dir",
                    root / "run", *NVAE_FLAGS, "--no-export")
    assert result.exit_code == 2 and "prior was given a contrastive part" in result.output


def test_fit_prior_reweights_an_autoregressive_top_prior(tiny_run):
    from keras_vae import runs
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import fixed_noise_elbo
    from test_export import run_in_session

    root, _ = tiny_run("nvae-ar-contrast", *NVAE_FLAGS, "--top-prior", "autoregressive", "--top-prior-components", 2,
                       "--top-prior-filters", 8, "--no-export")
    # Few draws for log Z: each of the autoregressive prior's draws takes a pass per position.
    result = invoke("fit-prior", root / "run", "--method", "contrastive", "--epochs", 2, "--batch-size", 32,
                    "--normalizer-draws", 3000)
    assert result.exit_code == 0 and "exports/nvae-ar-contrast/1" in result.output, result.output
    record = json.loads((root / "run" / runs.CONTRASTIVE_PRIOR_FILE).read_text())
    config, model = runs.load_run(str(root / "run"))
    assert model.top_prior == "autoregressive" and model.contrastive_groups == model.mixture_groups == record["groups"]
    test = load_split(config, "test")
    assert fixed_noise_elbo(model, test) == pytest.approx(record["test_elbo_after"], abs=1e-3)
    assert math.isfinite(record["log_normalizer"]) and 1 <= record["effective_sample_size"] <= contrastive_prior.PROPOSALS
    assert record["normalizer_draws"] == 3000
    images, _ = model.sample(3, seed=2)
    assert images.shape == (3, 28, 28, 1) and np.all(np.isfinite(images))
    served = run_in_session(str(root / "exports" / "nvae-ar-contrast" / "1"), lambda name: {
        "sample": {"num_samples": np.int32(3), "seed": np.int32(2), "temperature": np.float32(1.0)},
        "decode": {"z": np.zeros((2, model.code_dim), np.float32)}}.get(name, {"x": test.x[:3]}))
    np.testing.assert_allclose(served["sample"]["x_mean"], np.asarray(images), atol=1e-4)
    result = invoke("fit-prior", root / "run", "--method", "contrastive", "--top-groups", 1)
    assert result.exit_code == 2 and "--top-groups must be 2" in result.output


@pytest.mark.parametrize("args, message", [
    (["RUN", "--method", "contrastive", "--top-groups", 5], "--top-groups must name 1 to 4 top groups"),
    (["RUN", "--top-groups", 1], "--top-groups is an option of a contrastive prior"),
    (["RUN", "--normalizer-draws", 10], "--normalizer-draws is an option of a contrastive prior"),
    (["RUN", "--method", "contrastive", "--normalizer-draws", 999], "must be an integer of at least 1,000"),
    (["VAE_RUN", "--method", "contrastive"], "reweights the top groups of an nvae run's prior"),
])
def test_contrastive_mistakes_get_a_message_and_status_2(nvae_run, tmp_path, args, message):
    root, _ = nvae_run
    if "VAE_RUN" in args:
        untrained_vae_run(tmp_path / "vae", root / "tiny.npz")
    names = {"RUN": root / "run", "VAE_RUN": tmp_path / "vae"}
    result = invoke("fit-prior", *[names.get(a, a) for a in args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_the_help_gives_the_default_number_of_log_z_draws():
    help_text = " ".join(invoke("fit-prior", "--help").output.split())
    assert f"(default {contrastive_prior.NORMALIZER_DRAWS:,};" in help_text
