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


def test_fitted_priors_score_held_out_codes_and_draw_whole_codes():
    """Codes whose active dimensions (not contiguous) are a correlated Gaussian and whose others are N(0, 1):
    the held-out log-densities of N(0, I), N(0, 0.7² I) and the fitted Gaussian are their closed-form
    expectations under the codes' true law, the fitted densities beat N(0, I), their draws are N(0, 1) in the
    inactive dimensions, and the training rows draw whole training codes."""
    rng = np.random.default_rng(3)
    active = np.array([True, False, True, True, False])
    spread = 0.3  # the posteriors' standard deviation in the active dimensions
    loc, mean, covariance = correlated_codes(rng, 40000, dim=3)
    covariance = covariance + spread**2 * np.eye(3)  # of a posterior draw: the means' law plus the spread
    codes = np.zeros((40000, 5))
    codes[:, active] = loc + spread * rng.standard_normal(loc.shape)
    codes[:, ~active] = rng.standard_normal((40000, 2))
    train_loc = np.zeros((20000, 5))
    train_loc[:, active] = loc[:20000]
    train_scale = np.where(active, spread, 1.0) * np.ones((20000, 1))
    train, tuning, held_out = codes[:20000], codes[20000:22000, active], codes[22000:, active]
    names = ["prior", "prior-T0.7", "gaussian", "mixture-10", "mixture-100", "aggregate", "training-draws",
             "training-means"]
    rows = prior_holes.fitted_priors(train, train_loc, train_scale, active, tuning, held_out, 3, num=4000,
                                     names=names)
    assert list(rows) == names
    assert all(draws.shape == (4000, 5) for draws, _ in rows.values())
    second_moment = np.trace(covariance) + mean @ mean  # E|x|² under the codes' law
    expected = {"prior": -0.5 * second_moment - 1.5 * np.log(2 * np.pi),
                "prior-T0.7": -0.5 * second_moment / 0.49 - 1.5 * np.log(2 * np.pi * 0.49),
                "gaussian": -1.5 * (1 + np.log(2 * np.pi)) - 0.5 * np.linalg.slogdet(covariance)[1]}
    for name, value in expected.items():
        assert rows[name][1] == pytest.approx(value, abs=0.15), name
    for name in ("mixture-10", "mixture-100", "aggregate"):
        assert rows[name][1] > rows["prior"][1] + 1.0, name
        inactive = rows[name][0][:, ~active]
        assert abs(inactive.mean()) < 0.05 and inactive.std() == pytest.approx(1.0, abs=0.05), name
    for name, source in (("training-draws", train), ("training-means", train_loc)):
        draws, log_density = rows[name]
        assert log_density is None
        assert all(np.any(np.all(source == d, axis=1)) for d in draws[:50]), name  # whole codes, inactive too


def test_the_top_groups_are_kept_and_the_rest_drawn_from_n01():
    from conftest import config_for
    from keras_vae.models import build_model

    model = build_model(config_for("nvae", scales=2, groups_per_scale=1, channels=8, latent_channels=2, seed=1),
                        (64, 64, 1))
    top = prior_holes.top_mask(model, 1)
    sizes = model.plan.group_sizes()
    assert top.sum() == sizes[0] and top[: sizes[0]].all() and len(top) == sum(sizes)
    with pytest.raises(SystemExit, match="--keep must name 1 to 1 top groups of this 2-group run; received 2"):
        prior_holes.top_mask(model, 2)
    columns = np.zeros(len(top), bool)
    columns[::7] = True  # not contiguous, and across both groups
    kept = np.random.default_rng(4).standard_normal((3, columns.sum())).astype(np.float32)
    images = prior_holes.decode_with(model, kept, columns, np.random.default_rng(9), batch_size=2)
    codes = np.random.default_rng(9).standard_normal((3, len(top))).astype(np.float32)
    codes[:, columns] = kept
    np.testing.assert_allclose(images, model.decode(codes).numpy(), atol=1e-5)
    shifted = codes.copy()
    shifted[:, (np.flatnonzero(columns) + 1) % len(top)] = kept  # the draws one column off decode to other images
    assert not np.allclose(images, model.decode(shifted).numpy(), atol=1e-3)


def test_a_flat_model_has_no_top_groups():
    from conftest import config_for
    from keras_vae.models import build_model

    model = build_model(config_for("vae", latent_dim=3), (28, 28, 1))
    with pytest.raises(SystemExit, match="reads the top groups of an nvae run; this run holds a VAE"):
        prior_holes.top_mask(model, 1)


def test_the_learned_densities_and_the_noisy_draws(monkeypatch):
    """On codes as above (active dimensions a correlated Gaussian plus the posteriors' spread, the others N(0, 1)):
    the MADE scores held-out codes about as the true law does, the diffusion model's draws have its covariance, both
    take N(0, 1) in the inactive dimensions; the noisy draws are whole training codes whose active part is mixed
    with noise of the named share (its variance kept where the codes' is 1); an unknown row is refused."""
    rng = np.random.default_rng(5)
    active = np.array([False, True, True, False, True])
    loc, mean, covariance = correlated_codes(rng, 8000, dim=3)
    loc = (loc - mean) / np.sqrt(np.diag(covariance))  # standardized, as the whitened codes nearly are
    covariance = covariance / np.sqrt(np.outer(np.diag(covariance), np.diag(covariance))) + 0.09 * np.eye(3)
    codes = rng.standard_normal((8000, 5))
    codes[:, active] = loc + 0.3 * rng.standard_normal(loc.shape)
    train, tuning, held_out = codes[:6000], codes[6000:7000, active], codes[7000:, active]
    names = ["made", "diffusion", "noisy-draws-0.3", "noisy-draws-0.5"]
    import functools

    import code_densities
    for name, width in (("fit_made", {"hidden": 256}), ("fit_diffusion", {"width": 128})):  # narrower, for speed
        monkeypatch.setattr(code_densities, name, functools.partial(getattr(code_densities, name), **width))
    rows = prior_holes.fitted_priors(train, None, None, active, tuning, held_out, 5, num=2000, names=names,
                                     diffusion_steps=300, diffusion_levels=100)
    assert list(rows) == names
    truth = -1.5 * (1 + np.log(2 * np.pi)) - 0.5 * np.linalg.slogdet(covariance)[1]
    assert rows["made"][1] == pytest.approx(truth, abs=0.15)
    assert rows["diffusion"][1] is None
    np.testing.assert_allclose(np.cov(rows["diffusion"][0][:, active].T), covariance, atol=0.25)
    for name in ("made", "diffusion"):  # (test_code_densities checks the MADE's draws against its density)
        inactive = rows[name][0][:, ~active]
        assert abs(inactive.mean()) < 0.05 and inactive.std() == pytest.approx(1.0, abs=0.05), name
    for noise in (0.3, 0.5):
        draws, log_density = rows[f"noisy-draws-{noise}"]
        assert log_density is None
        sources = [np.flatnonzero(np.all(train[:, ~active] == d[~active], axis=1)) for d in draws[:100]]
        assert all(len(s) == 1 for s in sources)  # a whole training code outside the active dimensions
        source = train[[s[0] for s in sources]][:, active]
        residual = (draws[:100, active] - np.sqrt(1 - noise**2) * source) / noise
        assert residual.std() == pytest.approx(1.0, abs=0.15) and abs(residual.mean()) < 0.2
        expected = (1 - noise**2) * np.cov(train[:, active].T) + noise**2 * np.eye(3)
        np.testing.assert_allclose(np.cov(draws[:, active].T), expected, atol=0.1)
    with pytest.raises(SystemExit, match=r"Unknown rows \['flow'\]; the rows are prior, prior-T0.7"):
        prior_holes.fitted_priors(train, None, None, active, tuning, held_out, 5, names=["prior", "flow"])


def test_a_row_draws_the_same_alone_as_among_all():
    rng = np.random.default_rng(6)
    active = np.array([True, False, True])
    codes = rng.standard_normal((3000, 3))
    train, tuning, held_out = codes[:2000], codes[2000:2500, active], codes[2500:, active]
    alone = prior_holes.fitted_priors(train, train, np.ones_like(train), active, tuning, held_out, 7, num=50,
                                      names=["mixture-10"])
    among = prior_holes.fitted_priors(train, train, np.ones_like(train), active, tuning, held_out, 7, num=50,
                                      names=["prior", "gaussian", "mixture-10", "training-draws"])
    np.testing.assert_array_equal(alone["mixture-10"][0], among["mixture-10"][0])


def test_the_fitted_images_go_on_past_the_training_split_with_sprites_rendered_afresh():
    """Up to the training split's size, its first images; past it, sprites rendered as the dataset renders them,
    none of them a held-out image's factor combination, fewer of them the first of more; all in chunks of at
    most `chunk`."""
    from keras_vae.config import FitConfig
    from keras_vae.data import pipeline, sprites
    from keras_vae.data.splits import load_split

    config = FitConfig(model="nvae", dataset="sprites28")
    train, test = load_split(config, "train"), load_split(config, "test")
    [head] = prior_holes.fitted_images(config, 100, test.factors)
    np.testing.assert_array_equal(head.x, train.x[:100])
    seed = prior_holes.RENDER_SEED + config.seed
    would_draw = sprites.sample_factors(prior_holes.RENDER_BLOCK, [seed, 0])
    held_out = np.concatenate([test.factors[:5], would_draw[[3, 7]]])  # two that the renderer draws
    chunks = list(prior_holes.fitted_images(config, len(train.x) + 70, held_out, chunk=30))
    whole, rest = divmod(len(train.x), 30)
    assert [len(c.x) for c in chunks] == [30] * whole + [rest] * bool(rest) + [30, 30, 10]
    np.testing.assert_array_equal(np.concatenate([c.x for c in chunks[:-3]]), train.x)
    factors = np.concatenate([c.factors for c in chunks[-3:]])
    np.testing.assert_array_equal(factors, np.delete(would_draw, [3, 7], axis=0)[:70])
    assert not {tuple(f) for f in factors} & {tuple(f) for f in held_out}
    np.testing.assert_array_equal(np.concatenate([c.y for c in chunks[-3:]]), factors[:, 0])
    np.testing.assert_array_equal(np.concatenate([c.x for c in chunks[-3:]]),
                                  pipeline.to_unit_float(sprites.render(factors, 28)))
    np.testing.assert_array_equal(pipeline.to_unit_float(sprites.render(train.factors[:20], 28)), train.x[:20])
    fewer = list(prior_holes.fitted_images(config, len(train.x) + 40, held_out, chunk=len(train.x)))
    np.testing.assert_array_equal(fewer[-1].factors, factors[:40])


def test_rendered_factors_go_on_drawing_blocks_until_enough_are_kept():
    held_out = {tuple(f) for f in prior_holes.rendered_factors(15, set(), 3, block=10)[:12]}
    factors = prior_holes.rendered_factors(15, held_out, 3, block=10)  # 12 of the first 20 draws are held out
    assert len(factors) == 15 and not {tuple(f) for f in factors} & held_out
    assert len(prior_holes.rendered_factors(0, held_out, 3)) == 0
