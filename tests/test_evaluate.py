"""Evaluation numbers against exact values and constructed cases; every picture command."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import invoke, tiny_images
from keras_vae import losses, metrics
from keras_vae.evaluate import DISENTANGLEMENT_KEYS, EVALUATION_KEYS, SAMPLE_KEYS, importance_weighted_nll
from keras_vae.explore import attribute_vector, slerp
from test_losses import LinearGaussian, diag_normal


def test_importance_weighted_estimate_approaches_the_exact_likelihood_from_above():
    model = LinearGaussian(seed=3)
    x = np.random.default_rng(4).normal(size=(3, 5)).astype(np.float32)
    exact_nll = -model.log_px(x).numpy()
    mean, stddev, _ = model.exact_posterior(x)

    def log_weights(x_batch, k, seed):
        repeats = len(x_batch) // len(x)
        q = diag_normal(np.tile(mean + 0.3, (repeats, 1)), np.tile(1.6 * stddev, (len(x_batch), 1)))
        return model.log_weights(q, x_batch, k, seed=seed)

    def averaged(k, repeats):
        # The expectation of the K-sample estimate, by averaging independent repeats.
        tiled = np.tile(x, (repeats, 1))
        return importance_weighted_nll(log_weights, tiled, k, chunk=64).numpy().reshape(repeats, -1).mean(axis=0)

    minus_elbo, k10 = averaged(1, 4000), averaged(10, 400)
    k5000 = importance_weighted_nll(log_weights, x, 5000, chunk=64).numpy()  # chunked: 79 chunks of <= 64
    # -ELBO > E[-IWAE_10] > -IWAE_5000 ≈ -log p(x) (within 0.05 nats), never below it beyond noise.
    assert np.all(minus_elbo > k10 + 0.05) and np.all(k10 > k5000)
    assert np.all(k5000 >= exact_nll - 0.05)
    np.testing.assert_allclose(k5000, exact_nll, atol=0.05)


def test_chunked_log_mean_exp_is_exact():
    w = tf.constant(np.random.default_rng(0).normal(size=(1000, 4)) * 30, tf.float32)
    chunks = [w[i : i + k] for i, k in zip((0, 300, 600, 900), metrics.chunk_sizes(1000, 300))]
    np.testing.assert_allclose(metrics.chunked_log_mean_exp(chunks, 1000), losses.log_mean_exp(w), rtol=1e-6)
    assert metrics.chunk_sizes(1000, 300) == [300, 300, 300, 100]


def test_standard_error_from_running_moments_matches_numpy():
    values = np.random.default_rng(0).normal(230.0, 40.0, 1000)  # nats per image, as large as the real ones
    mean, mean_square = values.mean(), np.square(values).mean()
    assert metrics.standard_error(mean, mean_square, 1000) == pytest.approx(values.std(ddof=1) / np.sqrt(1000), rel=1e-9)
    assert metrics.standard_error(5.0, 25.0, 10) == 0.0  # ten equal values
    assert metrics.standard_error(5.0, 25.0, 1) is None  # one value has no spread


def test_active_units_count_living_dimensions_only():
    rng = np.random.default_rng(0)
    means = np.stack([rng.normal(0, 1, 500), np.full(500, 0.3), rng.normal(0, 0.05, 500)], axis=1)
    count, variances = metrics.active_units(means)
    assert count == 1 and variances[0] > 0.5 and variances[1] < 1e-12 and variances[2] < 0.01


def test_mig_is_near_one_for_a_disentangled_code_and_near_zero_for_a_shuffled_one():
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(0, 3, 5000), rng.integers(0, 10, 5000), rng.integers(0, 8, 5000)], axis=1)
    disentangled = factors + rng.normal(0, 0.05, factors.shape)  # one latent per factor
    assert metrics.mutual_information_gap(disentangled, factors) > 0.9
    shuffled = np.stack([rng.permutation(disentangled[:, j]) for j in range(3)], axis=1)
    assert metrics.mutual_information_gap(shuffled, factors) < 0.05
    entangled = np.stack([factors[:, 0] + factors[:, 1], factors[:, 0] + factors[:, 1]], axis=1).astype(float)
    assert metrics.mutual_information_gap(entangled, factors) < 0.1  # two identical codes: no gap


def test_linear_probe_separates_separable_features_and_not_noise():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 2000)
    features = np.eye(4)[labels] * 3 + rng.normal(0, 0.3, (2000, 4))
    assert metrics.linear_probe_accuracy(features[:1500], labels[:1500], features[1500:], labels[1500:]) > 0.98
    noise = rng.normal(size=(2000, 4))
    assert metrics.linear_probe_accuracy(noise[:1500], labels[:1500], noise[1500:], labels[1500:]) < 0.35


def test_attribute_vector_and_slerp():
    means = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    np.testing.assert_allclose(attribute_vector(means, np.array([1, 1, 0, 0]), 1), [2.0, -3.0])
    with pytest.raises(Exception, match="Labels present: \\[0, 1\\]"):
        attribute_vector(means, np.array([1, 1, 0, 0]), 7)
    a, b = np.array([2.0, 0.0]), np.array([0.0, 2.0])
    np.testing.assert_allclose(slerp(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(slerp(a, b, 1.0), b, atol=1e-12)
    assert np.linalg.norm(slerp(a, b, 0.5)) == pytest.approx(2.0)  # stays on the sphere; lerp would shrink


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    root, _ = tiny_run("explore", "--dataset", "sprites28", "--epochs", 1, "--batch-size", 128, "--latent-dim", 3,
                       "--no-export")
    return str(root / "run")


def test_a_trained_run_models_its_data_far_better_than_the_same_untrained_network(run_dir):
    """What a broken model or evaluator would fail (unlike a bound that holds for any model)."""
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.models import build_model
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    data = load_split(config, "test")
    subset = data.head(200)
    untrained = build_model(config, model.image_shape, 3, total_steps=1)
    trained_nll = evaluate_model(model, subset, iw_samples=20, progress=False)["nll_iw"]
    untrained_nll = evaluate_model(untrained, subset, iw_samples=20, progress=False)["nll_iw"]
    # Untrained: about 784·log 2 = 543 nats; one epoch on sprites28 brings it under 150 (measured ~100).
    assert untrained_nll > 400 and trained_nll < 150


def test_nll_iw_stderr_is_the_spread_of_the_per_image_estimates_over_root_n(run_dir):
    """Accumulated batch by batch, it equals the standard error of the per-image −log p(x) estimates."""
    from keras_vae.codes import labelled_batches
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    subset = load_split(config, "test").head(150)
    report = evaluate_model(model, subset, iw_samples=8, batch_size=50, progress=False)
    per_image = np.concatenate([  # the same batches, samples and seeds as evaluate_model's
        importance_weighted_nll(lambda x, k, seed: model.importance_log_weights(x, k, seed, y)[0], x, 8, 8).numpy()
        for x, y in labelled_batches(model, subset, 50)])
    assert report["nll_iw"] == pytest.approx(per_image.mean(), rel=1e-5)
    assert report["nll_iw_stderr"] == pytest.approx(per_image.std(ddof=1) / np.sqrt(150), rel=1e-3)
    assert report["nll_iw_stderr"] > 0


def test_mutual_information_is_the_aggregate_posterior_estimate_over_the_splits_codes(run_dir):
    from keras_vae import metrics
    from keras_vae.codes import labelled_batches
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    subset = load_split(config, "test").head(150)
    report = evaluate_model(model, subset, iw_samples=2, batch_size=50, progress=False)
    loc, scale = (np.concatenate(part) for part in zip(*[
        [a.numpy() for a in model.encode(x, y)] for x, y in labelled_batches(model, subset, 50)]))
    assert report["mutual_information"] == pytest.approx(metrics.posterior_mutual_information(loc, scale), rel=1e-6)
    assert 1.0 < report["mutual_information"] <= np.log(150)  # a trained 3-d code carries the sprites' factors


def test_evaluate_json_has_exactly_the_documented_keys(run_dir):
    result = invoke(*["evaluate", run_dir, "--iw-samples", "20", "--batch-size", "250", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    extras = set(SAMPLE_KEYS) | set(DISENTANGLEMENT_KEYS)  # null unless asked for
    assert set(report) == set(EVALUATION_KEYS) | extras | {"split", "iw_samples", "num_examples"}
    assert all(report[key] is None for key in extras)
    assert report["num_examples"] == 2000 and report["iw_samples"] == 20 and report["split"] == "test"
    assert report["elbo"] == pytest.approx(-(report["reconstruction_loss"] + report["kl"]), rel=1e-4)
    assert report["bits_per_dim"] == pytest.approx(report["nll_iw"] / (784 * np.log(2)))
    assert len(report["kl_per_dim"]) == 3 and sum(report["kl_per_dim"]) == pytest.approx(report["kl"], rel=0.02)
    # The reported code figures are those of the split's posterior means, recomputed here.
    from keras_vae.codes import encode_means
    from keras_vae.data.splits import load_split
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    data = load_split(config, "test")
    means = encode_means(model, data)
    assert report["active_units"] == metrics.active_units(means)[0]
    assert report["mig"] == pytest.approx(metrics.mutual_information_gap(means, data.factors))
    train = load_split(config, "train")
    assert report["linear_probe_accuracy"] == pytest.approx(
        metrics.linear_probe_accuracy(encode_means(model, train), train.y, means, data.y))
    table = invoke(*["evaluate", run_dir, "--iw-samples", "2", "--batch-size", "500"])
    assert table.exit_code == 0 and "active units" in table.output and "MIG" in table.output


def png_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize(
    "command, size",
    [
        (["sample", "--num", "12"], (10 * 30 + 2, 2 * 30 + 2)),
        (["reconstruct", "--num", "6"], (6 * 30 + 2, 2 * 30 + 2)),
        (["interpolate", "--pairs", "2", "--steps", "5"], (7 * 30 + 2, 2 * 30 + 2)),
        (["interpolate", "--pairs", "1", "--steps", "4", "--spherical"], (6 * 30 + 2, 30 + 2)),
        (["traverse", "--steps", "7"], (7 * 30 + 2, 3 * 30 + 2)),
        (["traverse", "--steps", "5", "--dims", "2,0"], (5 * 30 + 2, 2 * 30 + 2)),
        (["manifold", "--size", "6"], (6 * 30 + 2, 6 * 30 + 2)),
        (["attribute", "--label", "1", "--num", "3", "--steps", "4"], (5 * 30 + 2, 3 * 30 + 2)),
    ],
)
def test_every_picture_command_writes_a_png_of_the_expected_size(run_dir, tmp_path, command, size):
    out = str(tmp_path / "picture.png")
    result = invoke(*[command[0], run_dir, "--out", out, *command[1:]])
    assert result.exit_code == 0, result.output
    assert png_size(out) == size


def grid_cell(grid, row, column, size=28, pad=2):
    top, left = pad + row * (size + pad), pad + column * (size + pad)
    return grid[top : top + size, left : left + size]


def test_picture_grids_hold_the_decoded_points_their_rows_claim(run_dir):
    """Reconstructions sit under their inputs, interpolations run from the first code to the second (on the
    sphere with `spherical`), a traversal row sweeps its one dimension: each cell against the model."""
    from keras_vae.explore import interpolation_grid, reconstruction_grid, traversal_grid
    from keras_vae.runs import load_run

    _, model = load_run(run_dir)
    x = (tiny_images(4) / 255).astype(np.float32)
    means = model.encode(x)[0].numpy()

    def decoded(code):
        return model.decode(np.asarray(code, np.float32)[None])[0].numpy()

    grid = reconstruction_grid(model, x, columns=4)
    recon = model.reconstruct(x).numpy()
    for i in range(4):
        np.testing.assert_array_equal(grid_cell(grid, 0, i), x[i])
        np.testing.assert_allclose(grid_cell(grid, 1, i), recon[i], atol=1e-6)

    for spherical in (False, True):
        grid = interpolation_grid(model, [(x[0], x[1])], steps=5, spherical=spherical)
        np.testing.assert_allclose(grid_cell(grid, 0, 1), decoded(means[0]), atol=1e-5)
        np.testing.assert_allclose(grid_cell(grid, 0, 5), decoded(means[1]), atol=1e-5)
        middle = slerp(means[0], means[1], 0.5) if spherical else (means[0] + means[1]) / 2
        np.testing.assert_allclose(grid_cell(grid, 0, 3), decoded(middle), atol=1e-5)
    assert not np.allclose(slerp(means[0], means[1], 0.5), (means[0] + means[1]) / 2, atol=1e-3)

    grid = traversal_grid(model, x[2], None, value_range=2.0, steps=3, dims=[1, 0])
    for row, dim in enumerate([1, 0]):
        for column, value in enumerate([-2.0, 0.0, 2.0]):
            code = means[2].copy()
            code[dim] = value
            np.testing.assert_allclose(grid_cell(grid, row, column), decoded(code), atol=1e-5)


def test_a_two_dimensional_manifold_needs_no_kl_ordering(monkeypatch):
    from keras_vae import explore
    from keras_vae.config import FitConfig
    from keras_vae.data.splits import Split
    from keras_vae.models import build_model

    model = build_model(FitConfig(latent_dim=2), (8, 8, 1))
    monkeypatch.setattr(explore, "mean_kl_per_dim", lambda *_: pytest.fail("the KL of a 2-D code was computed"))
    grid = explore.manifold_picture(model, Split("test", np.zeros((4, 8, 8, 1), np.float32), None, None), size=3)
    assert grid.shape == (3 * 10 + 2, 3 * 10 + 2, 1)


def test_pictures_are_also_logged_to_tensorboard(run_dir, tmp_path):
    invoke(*["sample", run_dir, "--out", str(tmp_path / "s.png"), "--num", "4"])
    events = [os.path.join(run_dir, "logs", "explore", f) for f in os.listdir(os.path.join(run_dir, "logs", "explore"))]
    tags = {v.tag for path in events for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value}
    assert "samples" in tags


def test_sample_grid_is_the_decoded_prior_draw(run_dir, tmp_path):
    from keras_vae.runs import load_run

    _, model = load_run(run_dir)
    invoke(*["sample", run_dir, "--out", str(tmp_path / "s.png"), "--num", "2", "--seed", "5"])
    grid = np.asarray(Image.open(tmp_path / "s.png"), np.float32) / 255
    expected = model.sample(2, seed=5)[0].numpy()
    np.testing.assert_allclose(grid[2:30, 32:60], expected[1, ..., 0], atol=1 / 255 + 1e-6)


def test_embed_writes_projector_files(run_dir, tmp_path):
    out = tmp_path / "projector"
    result = invoke(*["embed", run_dir, "--num", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = (out / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "embedding/.ATTRIBUTES/VARIABLE_VALUE"' in config and "sprite.png" in config
    assert len((out / "metadata.tsv").read_text().splitlines()) == 50
    reader = tf.train.load_checkpoint(str(out))
    assert reader.get_tensor("embedding/.ATTRIBUTES/VARIABLE_VALUE").shape == (50, 3)
    assert png_size(out / "sprite.png") == (8 * 28, 7 * 28)


@pytest.mark.parametrize(
    "command, message",
    [
        (["sample", "--num", "0"], "--num must be positive"),
        (["traverse", "--dims", "9"], "--dims must lie in 0..2"),
        (["traverse", "--dims", "a,b"], "comma-separated integers"),
        (["attribute", "--label", "9"], "must name a label present"),
        (["resample"], "`resample` keeps the top groups of a hierarchical code (nvae, hvae)"),
    ],
)
def test_picture_mistakes_get_a_message(run_dir, tmp_path, command, message):
    result = invoke(*[command[0], run_dir, "--out", str(tmp_path / "p.png"), *command[1:]])
    assert result.exit_code == 2 and message in result.output


def test_writing_into_a_missing_folder_and_evaluating_a_missing_run(run_dir, tmp_path):
    result = invoke(*["sample", run_dir, "--out", str(tmp_path / "nope" / "s.png")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke(*["evaluate", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output


# ------------------------------------------------- the metrics papers report beside likelihoods
class ImageStandIn:
    """A 'model' whose samples and reconstructions are given images: the wiring of `sample_quality`."""

    uses_labels = False

    def __init__(self, samples, reconstruct=lambda x: x):
        self.samples, self._reconstruct = samples, reconstruct

    def sample(self, num, seed=0, y=None):  # batches are drawn in order: each call takes the next images
        batch, self.samples = self.samples[:num], self.samples[num:]
        return (batch,)

    def reconstruct(self, x, y=None):
        return self._reconstruct(np.asarray(x))


class PixelFeatures:
    """Means of 3x3 pixel blocks as features; the mean intensity's two-class split as probabilities."""

    def features(self, x):
        x = np.asarray(x, np.float64)
        return x.reshape(len(x), x.shape[1] // 3, 3, x.shape[2] // 3, 3).mean(axis=(2, 4)).reshape(len(x), -1)

    def probabilities(self, x):
        bright = np.asarray(x).reshape(len(x), -1).mean(axis=1, keepdims=True) > 0.1
        return np.where(bright, [[0.9, 0.1]], [[0.1, 0.9]])

    def description(self):
        return {"name": "pixels", "digest": "-", "accuracy": None}


def test_sample_quality_compares_samples_with_the_split_and_reconstructions_with_their_inputs():
    from keras_vae.data.splits import Split
    from keras_vae.evaluate import PSNR_CAP, sample_quality

    rng = np.random.default_rng(0)
    grey = rng.uniform(size=(400, 12, 12, 1)).astype(np.float32)
    originals, measured = Split("test", grey, None, None), Split("test", (grey > 0.5).astype(np.float32), None, None)
    # Samples from the data distribution itself, and reconstructions that return the measured input exactly.
    perfect = sample_quality(ImageStandIn(rng.uniform(size=(400, 12, 12, 1))), originals, measured, PixelFeatures(),
                             batch_size=128)
    assert perfect["psnr"] == PSNR_CAP and perfect["ssim"] == pytest.approx(1.0)
    assert perfect["fid"] < 0.05 and abs(perfect["kid"]) < 1e-3
    assert perfect["precision"] > 0.7 and perfect["recall"] > 0.7 and perfect["num_samples"] == 400
    # rFID compares the (binary) reconstructions with the grey split: not zero although PSNR is perfect.
    assert perfect["rfid"] > 10 * perfect["fid"] and perfect["feature_network"]["name"] == "pixels"
    # Blank samples: far from the data, no precision, no recall; halved reconstructions lose 20·log10(2) dB
    # against a pixel scale of 1 only where the image was bright.
    blank = sample_quality(ImageStandIn(np.zeros((400, 12, 12, 1))), originals, measured, PixelFeatures(),
                           batch_size=128)
    assert blank["fid"] > 100 * perfect["fid"] and blank["precision"] == 0 and blank["recall"] == 0
    half = sample_quality(ImageStandIn(grey, reconstruct=lambda x: x / 2), originals, measured, PixelFeatures(),
                          num_samples=64, batch_size=128)
    mse = np.mean((measured.x / 2 - measured.x) ** 2, axis=(1, 2, 3))
    assert half["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-5) and half["num_samples"] == 64


def test_sample_metrics_from_the_cli_are_seeded_and_train_the_feature_network_once(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_VAE_CACHE", str(tmp_path))
    args = ["evaluate", run_dir, "--iw-samples", "2", "--batch-size", "500", "--sample-metrics", "--num-samples",
            "300", "--json"]
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    assert "Training the lenet:sprites28 feature network" in first.stderr
    assert "Loaded the lenet:sprites28 feature network" in second.stderr
    assert len(list((tmp_path / "feature_nets").glob("*.keras"))) == 1
    report, again = json.loads(first.stdout), json.loads(second.stdout)
    assert report == again  # stateless samples, a deterministic classifier
    assert set(SAMPLE_KEYS) <= set(report) and report["num_samples"] == 300
    assert report["feature_network"]["accuracy"] > 0.85  # three shapes at 28x28 (measured 0.93)
    # A trained model's reconstructions lie closer to the data than its prior samples do.
    assert 0 <= report["rfid"] < report["fid"] and 0 <= report["precision"] <= 1 and 0 <= report["recall"] <= 1
    assert 1 <= report["inception_score"] <= 3 and 0 < report["ssim"] <= 1 and report["psnr"] > 10
    assert report["beta_vae_score"] is None  # not asked for


class FactorCode:
    """A 'model' whose code is its input's pixels: two pixels holding two factors (an exact code), or noise."""

    uses_labels = False

    def __init__(self, noise=False):
        self.noise = noise

    def probe_features(self, x, y=None):
        code = tf.reshape(x, [-1, 2])
        return tf.random.stateless_uniform(tf.shape(code), [1, 2]) if self.noise else code


def test_disentanglement_scores_read_the_model_code_of_the_factor_images():
    from types import SimpleNamespace

    from keras_vae.config import FitConfig
    from keras_vae.data.dsprites import FactorImages
    from keras_vae.evaluate import DISENTANGLEMENT_KEYS, disentanglement_scores

    grid = FactorImages((4, 5), lambda f: (f * 50).astype(np.uint8).reshape(-1, 1, 2, 1))
    dataset = SimpleNamespace(ground_truth=grid)
    config = FitConfig(dataset="sprites28", binarize="none")
    exact = disentanglement_scores(FactorCode(), dataset, config, points=400)
    noise = disentanglement_scores(FactorCode(noise=True), dataset, config, points=400)
    assert set(exact) == set(DISENTANGLEMENT_KEYS) and exact["disentanglement_points"] == 400
    for key in ("beta_vae_score", "factor_vae_score", "dci_disentanglement", "dci_completeness",
                "dci_informativeness", "modularity", "explicitness"):
        assert exact[key] > 0.95, key
    assert exact["dsprites_mig"] > 0.8 and exact["sap"] > 0.7
    assert noise["beta_vae_score"] < 0.7 and noise["dci_informativeness"] < 0.5 and noise["dsprites_mig"] < 0.1
    assert noise["explicitness"] < 0.6
    assert exact == disentanglement_scores(FactorCode(), dataset, config, points=400)  # seeded


def test_disentanglement_from_the_cli_scores_the_runs_posterior_means(run_dir):
    from keras_vae.codes import encode_means
    from keras_vae.data.datasets import dataset_of
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import code_representation
    from keras_vae.runs import load_run

    result = invoke(*["evaluate", run_dir, "--iw-samples", "2", "--batch-size", "500", "--disentanglement",
                      "--disentanglement-points", "200"])
    assert result.exit_code == 0, result.output
    assert "BetaVAE score" in result.output and "DCI disentanglement" in result.output
    config, model = load_run(run_dir)
    dataset = dataset_of(config)
    data = load_split(config, "test", dataset)
    factors = data.factors[:300]
    images = dataset.ground_truth.observations(factors)
    np.testing.assert_array_equal(images, dataset.x_test[:300])  # the grid draws the split's own images
    np.testing.assert_allclose(code_representation(model, config)(images), encode_means(model, data.head(300)),
                               atol=1e-4)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--disentanglement"], "needs a dataset with ground-truth factors"),
        (["--sample-metrics"], "no class labels to train a classifier on"),
        (["--disentanglement-points", "1"], "1 is not in the range x>=2"),
    ],
)
def test_metrics_a_run_cannot_have_get_a_message(tiny_run, flags, message):
    root, _ = tiny_run("tiny", "--latent-dim", 3, process=True)
    result = invoke(*["evaluate", str(root / "run"), "--iw-samples", "2", *flags])
    assert result.exit_code == 2 and message in result.output, result.output
