"""The VQ-VAE's quantizer, codebook updates and PixelCNN prior, and `fit-prior` end to end."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import invoke, tiny_images
from keras_vae import pixelcnn
from keras_vae.config import FitConfig
from keras_vae.export import export_saved_model
from keras_vae.models import build_model
from keras_vae.models.vq import code_grid, nearest_codes, perplexity


def make(**extra):
    keras.utils.set_random_seed(1)  # the same codebook whatever ran before
    config = FitConfig(model="vq_vae", latent_dim=4, codebook_size=8, codebook_dim=3, seed=1, **extra)
    model = build_model(config, (28, 28, 1))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    return model


def images(num=32):
    return (tiny_images(num) / 255).astype(np.float32)


def test_the_quantizer_picks_the_nearest_entry_and_counts_usage():
    rng = np.random.default_rng(0)
    z, codebook = rng.normal(size=(5, 7, 3)).astype(np.float32), rng.normal(size=(11, 3)).astype(np.float32)
    brute = np.argmin(((z[:, :, None, :] - codebook[None, None]) ** 2).sum(-1), axis=-1)
    np.testing.assert_array_equal(nearest_codes(tf.constant(z), tf.constant(codebook)), brute)
    assert float(perplexity(tf.constant([0, 1, 2, 3] * 5), 8)) == pytest.approx(4.0)
    assert float(perplexity(tf.constant([5] * 9), 8)) == pytest.approx(1.0)
    assert [code_grid(n) for n in (16, 12, 7, 1)] == [(4, 4), (3, 4), (1, 7), (1, 1)]


def test_straight_through_passes_gradients_to_the_encoder_and_the_codebook_moves():
    model = make()
    x = images()
    with tf.GradientTape() as tape:
        reconstruction = tf.reduce_mean(model.compute_terms(x, training=True)["reconstruction_loss"])
    encoder_gradients = tape.gradient(reconstruction, model.encoder.trainable_variables)
    # argmin has no gradient: without the straight-through path these would be None.
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in encoder_gradients)
    # The decoder's gradient at z_q is copied to z_e unchanged.
    vectors = model.encoder_vectors(x)
    _, quantized = model.nearest_entries(vectors)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([vectors, quantized])
        through = vectors + tf.stop_gradient(quantized - vectors)
        loss_st = tf.reduce_sum(model.likelihood_layer(model.decode_vectors(through)).log_prob(x))
        loss_q = tf.reduce_sum(model.likelihood_layer(model.decode_vectors(quantized)).log_prob(x))
    np.testing.assert_allclose(tape.gradient(loss_st, vectors), tape.gradient(loss_q, quantized), rtol=1e-5, atol=1e-6)
    before = model.codebook.numpy().copy()
    history = model.fit(x, batch_size=16, epochs=2, verbose=0).history
    moved = np.abs(model.codebook.numpy() - before).max(axis=1) > 0
    assert moved.sum() >= 1 and {"vq_loss", "perplexity", "used_codes"} <= set(history)
    assert 1 <= history["used_codes"][-1] <= 8 and 1 <= history["perplexity"][-1] <= 8


def test_ema_codebook_converges_to_the_mean_of_its_vectors():
    model = make(vq_ema=True)
    assert not model.codebook.trainable
    codebook = model.codebook.numpy()
    rng = np.random.default_rng(1)
    # Two clusters of vectors, around entries 2 and 5 of the codebook.
    vectors = np.concatenate([codebook[2] + 0.05 * rng.normal(size=(20, 3)),
                              codebook[5] + 0.05 * rng.normal(size=(10, 3))]).astype(np.float32)[None]
    indices, _ = model.nearest_entries(tf.constant(vectors))
    assert set(indices.numpy().ravel()) == {2, 5}
    for _ in range(1500):  # 0.99^1500 ≈ 3e-7: the averages have forgotten their zero start
        model.update_codebook(tf.constant(vectors), indices)
    updated = model.codebook.numpy()
    np.testing.assert_allclose(updated[2], vectors[0, :20].mean(0), atol=1e-4)
    np.testing.assert_allclose(updated[5], vectors[0, 20:].mean(0), atol=1e-4)
    unused = [k for k in range(8) if k not in (2, 5)]
    np.testing.assert_array_equal(updated[unused], codebook[unused])


def test_the_pixelcnn_is_causal_in_raster_order():
    network = pixelcnn.build_pixelcnn((3, 4), 5, filters=8, num_layers=2)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, (1, 3, 4)).astype(np.int32)
    base = network(codes).numpy()[0].reshape(12, 5)
    for position in range(12):
        changed = codes.copy().reshape(12)
        changed[position] = (changed[position] + 1) % 5
        logits = network(changed.reshape(1, 3, 4)).numpy()[0].reshape(12, 5)
        differs = np.abs(logits - base).max(axis=1) > 1e-6
        assert not differs[: position + 1].any()  # nothing at or before the changed position moves


def test_a_fitted_pixelcnn_learns_the_code_distribution_and_samples_from_it():
    # Two code maps, each half the time: a fitted prior needs ~log 2 nats per map.
    patterns = np.array([[[1, 2], [3, 0]], [[0, 0], [1, 1]]], np.int32)
    codes = patterns[np.arange(400) % 2]
    network = pixelcnn.build_pixelcnn((2, 2), 4, filters=16, num_layers=1)
    network.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    network.fit(codes, codes, epochs=30, batch_size=100, verbose=0)
    probabilities = np.exp(pixelcnn.code_log_prob(network, tf.constant(patterns)).numpy())
    assert probabilities.sum() == pytest.approx(1.0, abs=0.02)  # all the mass on the two maps ...
    assert np.all((probabilities > 0.3) & (probabilities < 0.7))  # ... about half each
    drawn = pixelcnn.sample_codes(network, 200, (2, 2), tf.constant([3, 4])).numpy()
    first = np.all(drawn == patterns[0], axis=(1, 2))
    second = np.all(drawn == patterns[1], axis=(1, 2))
    assert (first | second).mean() > 0.97 and 0.25 < first.mean() < 0.75


@pytest.fixture(scope="module")
def vq_run(tiny_run):
    root, _ = tiny_run("vq", "--model", "vq_vae", "--latent-dim", 4, "--codebook-size", 16, "--codebook-dim", 4)
    return root, invoke


def test_fit_prior_tightens_the_bound_and_sampling_goes_through_it(vq_run):
    root, invoke = vq_run
    before = json.loads(invoke("evaluate", root / "run", "--iw-samples", 2, "--json").output)
    assert before["kl"] == pytest.approx(4 * math.log(16), rel=1e-5)  # uniform prior: h·w·log K
    result = invoke("fit-prior", root / "run", "--epochs", 15, "--batch-size", 32)
    assert result.exit_code == 0, result.output
    assert "exports/vq/2" in result.output
    history = json.loads((root / "run" / "prior_history.json").read_text())
    assert history["val_loss"][-1] < 4 * math.log(16)
    after = json.loads(invoke("evaluate", root / "run", "--iw-samples", 2, "--json").output)
    assert after["kl"] < before["kl"] and after["elbo"] > before["elbo"]
    assert after["reconstruction_loss"] == pytest.approx(before["reconstruction_loss"], rel=1e-5)
    assert after["nll_iw"] == pytest.approx(-after["elbo"], rel=1e-5)  # a point-mass posterior

    from keras_vae.runs import load_run

    _, model = load_run(str(root / "run"))
    assert float(model.prior_fitted) == 1.0
    loaded = tf.saved_model.load(str(root / "exports" / "vq" / "2"))
    sample = loaded.signatures["sample"](num_samples=tf.constant(3), seed=tf.constant(5))
    expected_x, expected_codes = model.sample(3, seed=5)
    np.testing.assert_array_equal(sample["indices"], expected_codes)
    np.testing.assert_allclose(sample["x_mean"], expected_x, atol=1e-5)
    assert invoke("sample", root / "run", "--out", root / "s.png", "--num", 4).exit_code == 0


def test_vq_exports_encode_to_indices_and_decode_from_them(vq_run, tmp_path):
    model = make()
    model.fit(images(), batch_size=16, epochs=1, verbose=0)
    loaded = tf.saved_model.load(export_saved_model(model, str(tmp_path), "vq"))
    x = tf.constant(images(5))
    indices = loaded.signatures["encode"](x=x)["indices"]
    assert indices.dtype == tf.int32 and indices.shape == (5, 2, 2)
    np.testing.assert_array_equal(indices, model.encode_indices(x))
    decoded = loaded.signatures["decode"](indices=indices)["x_mean"]
    np.testing.assert_allclose(decoded, loaded.signatures["reconstruct"](x=x)["x_mean"], atol=1e-6)
    np.testing.assert_allclose(decoded, model.reconstruct(x), atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="code indices in 0..7"):
        loaded.signatures["decode"](indices=tf.fill([1, 2, 2], 8))


@pytest.mark.parametrize("args, message", [
    (["fit-prior", "VAE_RUN"], "fit-prior trains the code prior of a vq_vae run"),
    (["fit-prior", "RUN", "--epochs", 0], "--epochs must be a positive integer"),
    (["traverse", "RUN", "--out", "OUT"], "has a discrete one"),
    (["fit", "--model", "vq_vae", "--codebook-size", 0], "--codebook-size must be a positive integer"),
])
def test_vq_mistakes_get_a_message_and_status_2(vq_run, tmp_path, args, message):
    root, invoke = vq_run
    if "VAE_RUN" in args:
        (tmp_path / "vae").mkdir()
        config = FitConfig(model="vae", latent_dim=2, dataset=str(root / "tiny.npz"))
        config.save(str(tmp_path / "vae" / "config.json"))
        build_model(config, (28, 28, 1)).save(str(tmp_path / "vae" / "model.keras"))
    names = {"RUN": root / "run", "VAE_RUN": tmp_path / "vae", "OUT": tmp_path / "o.png"}
    result = invoke(*[names.get(a, a) for a in args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
