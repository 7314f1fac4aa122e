"""scripts/prior_holes.py: the densities it fits to a hierarchy's top codes, and how it decodes their draws."""

import os
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import prior_holes  # noqa: E402


def correlated_codes(rng, num, dim=4):
    """Draws of a correlated Gaussian that is not N(0, I), and its (mean, covariance)."""
    mixing = rng.normal(size=(dim, dim))
    mean = rng.normal(size=dim)
    return mean + rng.standard_normal((num, dim)) @ mixing.T, mean, mixing @ mixing.T


def test_the_gaussian_log_densities_match_tfp():
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    rng = np.random.default_rng(0)
    points, mean, covariance = correlated_codes(rng, 50)
    expected = tfd.MultivariateNormalTriL(mean, np.linalg.cholesky(covariance)).log_prob(points).numpy()
    np.testing.assert_allclose(prior_holes.gaussian_log_density(points, mean, covariance), expected, rtol=1e-10)
    standard = tfd.Independent(tfd.Normal(np.zeros(4), 1.0), 1).log_prob(points).numpy()
    np.testing.assert_allclose(prior_holes.standard_normal_log_density(points), standard, rtol=1e-10)


def test_the_gaussian_fit_is_the_maximum_likelihood_one():
    rng = np.random.default_rng(1)
    points, true_mean, true_covariance = correlated_codes(rng, 20000)
    mean, covariance = prior_holes.gaussian_fit(points)
    np.testing.assert_allclose(mean, true_mean, atol=0.1)
    np.testing.assert_allclose(covariance, true_covariance, atol=0.2 * np.abs(true_covariance).max())
    fitted = prior_holes.gaussian_log_density(points, mean, covariance).mean()
    for other_mean, other_covariance in ((mean + 0.05, covariance), (mean, 1.05 * covariance),
                                         (true_mean, true_covariance)):
        assert fitted > prior_holes.gaussian_log_density(points, other_mean, other_covariance).mean()


def test_mixture_draws_follow_the_weights_and_the_components():
    rng = np.random.default_rng(2)
    loc = np.array([[-100.0, 0.0], [100.0, 5.0]])
    scale = np.array([[1.0, 2.0], [0.5, 0.1]])
    draws = prior_holes.mixture_draws(rng, np.log([0.8, 0.2]), loc, scale, 20000)
    first = draws[:, 0] < 0
    assert first.mean() == pytest.approx(0.8, abs=0.01)
    np.testing.assert_allclose(draws[first].std(0), scale[0], rtol=0.05)
    np.testing.assert_allclose(draws[~first].mean(0), loc[1], atol=0.05)
    assert np.all(prior_holes.mixture_draws(rng, np.array([0.0, -np.inf]), loc, scale, 100)[:, 0] < 0)


def test_fitted_priors_describe_codes_unlike_n01_better_than_n01_does():
    """Codes of a correlated Gaussian: every density but N(0, I) gives held-out codes a higher log-density,
    the training rows draw from the training posteriors, and each row has the requested draws."""
    from keras_vae import priors

    rng = np.random.default_rng(3)
    codes, _, _ = correlated_codes(rng, 900)
    train_loc, train_scale = codes[:600], np.full((600, 4), 0.3)
    held_out = codes[600:] + 0.3 * rng.standard_normal((300, 4))  # posterior draws of other images
    rows = prior_holes.fitted_priors(train_loc, train_scale, held_out, rng, num=200)
    assert list(rows) == ["prior", "gaussian", "mixture-10", "mixture-100", "aggregate", "training-draws",
                          "training-means"]
    assert all(draws.shape == (200, 4) for draws, _ in rows.values())
    prior = rows["prior"][1]
    assert prior == pytest.approx(prior_holes.standard_normal_log_density(held_out).mean())
    for name in ("gaussian", "mixture-10", "mixture-100", "aggregate"):
        assert rows[name][1] > prior + 1.0, name
    means = rows["training-means"][0]
    assert rows["training-means"][1] is None
    assert all(np.any(np.all(train_loc == m, axis=1)) for m in means)  # each a training image's means
    unwidened = priors.mean_log_likelihood(held_out, np.zeros(len(train_loc)), train_loc, train_scale)
    assert rows["training-draws"][1] == pytest.approx(unwidened)


def test_the_top_groups_are_kept_and_the_rest_drawn_from_n01():
    from conftest import config_for
    from keras_vae.models import build_model

    model = build_model(config_for("nvae", scales=2, groups_per_scale=1, channels=8, latent_channels=2, seed=1),
                        (64, 64, 1))
    top = prior_holes.top_mask(model, 1)
    sizes = model.plan.group_sizes()
    assert top.sum() == sizes[0] and top[: sizes[0]].all() and len(top) == sum(sizes)
    with pytest.raises(SystemExit, match="--keep must name 1 to 1 top groups"):
        prior_holes.top_mask(model, 2)
    kept = np.random.default_rng(4).standard_normal((3, sizes[0])).astype(np.float32)
    images = prior_holes.decode_with(model, kept, top, np.random.default_rng(9), batch_size=2)
    codes = np.random.default_rng(9).standard_normal((3, len(top))).astype(np.float32)
    codes[:, top] = kept
    np.testing.assert_allclose(images, model.decode(codes).numpy(), atol=1e-5)


def test_a_flat_model_has_no_top_groups():
    from conftest import config_for
    from keras_vae.models import build_model

    model = build_model(config_for("vae", latent_dim=3), (28, 28, 1))
    with pytest.raises(SystemExit, match="hierarchical run .* received 1 for a VAE"):
        prior_holes.top_mask(model, 1)
