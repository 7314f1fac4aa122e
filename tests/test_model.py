"""The base VAE: ELBO terms, β schedules, free bits, training, saving, architectures."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_images
from keras_vae.data import datasets
from keras_vae.errors import UserError
from keras_vae.models.vae import VAE


def binary_batch(num=16, size=28):
    return (tiny_images(num, size) / 255).astype(np.float32)


def test_terms_are_the_elbo_with_the_closed_form_kl():
    model = VAE((28, 28, 1), latent_dim=3)
    x = binary_batch()
    terms = model.compute_terms(x)
    np.testing.assert_allclose(terms["elbo"], -(terms["reconstruction_loss"] + terms["kl"]), rtol=1e-6)
    mean, stddev = (t.numpy() for t in model.encode(x))
    closed_form = np.sum(-np.log(stddev) + (stddev**2 + mean**2) / 2 - 0.5, axis=1)
    np.testing.assert_allclose(terms["kl"].numpy(), closed_form, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(terms["kl_per_dim"].numpy().sum(axis=1), closed_form, rtol=1e-4, atol=1e-5)
    assert np.all(terms["reconstruction_loss"].numpy() > 0)


def test_predict_returns_the_decoder_mean_at_the_codes_mean():
    model = VAE((28, 28, 1), latent_dim=3)
    x = binary_batch(5)
    out = model.predict(x, verbose=0)
    assert isinstance(out, np.ndarray) and out.shape == (5, 28, 28, 1)
    mean, _ = model.encode(x)
    np.testing.assert_allclose(out, model.likelihood(mean).mean(), atol=1e-6)  # not a draw: the mean, every call
    np.testing.assert_array_equal(out, model.predict(x, verbose=0))


def train_steps(model, x, steps):
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model.fit(x, batch_size=len(x), epochs=steps, verbose=0, shuffle=False).history


def test_kl_warmup_raises_beta_linearly_per_step():
    model = VAE((28, 28, 1), latent_dim=3, beta=2.0, kl_warmup_steps=4)
    history = train_steps(model, binary_batch(), 6)
    assert history["beta"] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    # The loss uses the warmed-up β; the reported ELBO does not.
    first = history["reconstruction_loss"][0] + 0.5 * history["kl"][0]
    assert history["loss"][0] == pytest.approx(first, rel=1e-5)
    assert history["elbo"][0] == pytest.approx(-(history["reconstruction_loss"][0] + history["kl"][0]), rel=1e-5)


def test_free_bits_floor_the_loss_but_not_the_reported_kl():
    x = binary_batch()
    plain = VAE((28, 28, 1), latent_dim=4, seed=1)
    floored = VAE((28, 28, 1), latent_dim=4, seed=1, free_bits=5.0)
    floored.set_weights(plain.get_weights())
    terms = plain.compute_terms(x)
    loss_plain = plain.objective(terms, 1.0).numpy()
    loss_floored = floored.objective(terms, 1.0).numpy()
    expected = np.maximum(np.mean(terms["kl_per_dim"], 0), 5.0).sum() - np.mean(terms["kl"])
    assert loss_floored - loss_plain == pytest.approx(expected, rel=1e-5)
    assert loss_floored > loss_plain  # an untrained posterior has KL far below 5 nats per dimension


def test_free_bits_floor_a_monte_carlo_kl_as_a_whole():
    x = binary_batch()
    plain = VAE((28, 28, 1), latent_dim=4, seed=1, prior="mog", prior_components=3)
    floored = VAE((28, 28, 1), latent_dim=4, seed=1, prior="mog", prior_components=3, free_bits=5.0)
    floored.set_weights(plain.get_weights())
    terms = plain.compute_terms(x)
    assert terms["kl_per_dim"] is None  # a mixture prior has no per-dimension KL
    difference = floored.objective(terms, 1.0).numpy() - plain.objective(terms, 1.0).numpy()
    mean_kl = np.mean(terms["kl"])
    assert mean_kl < 20.0 and difference == pytest.approx(20.0 - mean_kl, rel=1e-5)  # the floor: 5 nats × 4


def test_one_training_step_changes_every_trainable_weight():
    model = VAE((28, 28, 1), latent_dim=3, architecture="conv-small")
    before = [w.numpy().copy() for w in model.trainable_weights]
    train_steps(model, binary_batch(), 1)
    changed = [not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert all(changed)


def test_a_short_fit_on_sprites_lowers_the_loss():
    data = datasets.load_sprites(size=28, num_train=512, num_test=1)
    x = data.x_train.astype(np.float32) / 255
    model = VAE((28, 28, 1), latent_dim=4)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(x, batch_size=64, epochs=4, verbose=0).history
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    assert history["elbo"][-1] > history["elbo"][0]


def test_same_seed_same_noise_different_seed_different_noise():
    x = binary_batch()
    a, b, c = (VAE((28, 28, 1), latent_dim=3, seed=s) for s in (0, 0, 1))
    b.set_weights(a.get_weights())
    c.set_weights(a.get_weights())
    ra, rb, rc = (m.compute_terms(x)["reconstruction_loss"].numpy() for m in (a, b, c))
    np.testing.assert_array_equal(ra, rb)
    assert not np.allclose(ra, rc)
    # Successive calls draw fresh noise.
    assert not np.allclose(ra, a.compute_terms(x)["reconstruction_loss"].numpy())


def test_keras_format_round_trip_restores_a_trainable_model(tmp_path):
    model = VAE((28, 28, 1), latent_dim=3, architecture="conv-small", likelihood="gaussian", beta=0.5)
    train_steps(model, binary_batch(), 1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is VAE and restored.beta == 0.5 and restored.likelihood_name == "gaussian"
    x = binary_batch(4)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(restored.likelihood_layer.stddev(), model.likelihood_layer.stddev())
    restored.compile(optimizer="adam")
    assert np.isfinite(restored.fit(x, epochs=1, verbose=0).history["loss"][0])


@pytest.mark.parametrize("architecture, shape", [
    *((a, s) for a in ("mlp", "mlp-200-tanh", "mlp-gated", "conv", "conv-small") for s in ((28, 28, 1), (32, 16, 3))),
    ("conv-64", (64, 64, 1)), ("conv-64", (32, 48, 3)), ("broadcast-64", (64, 64, 1)), ("broadcast-64", (32, 48, 3)),
])
def test_every_architecture_maps_images_to_images(architecture, shape):
    model = VAE(shape, latent_dim=5, architecture=architecture)
    x = np.random.default_rng(0).random((2,) + shape).astype(np.float32)
    mean, stddev = model.encode(x)
    assert mean.shape == (2, 5) and stddev.shape == (2, 5) and np.all(stddev.numpy() > 0)
    decoded = model.decode(mean)
    assert decoded.shape == (2,) + shape
    # Each example is its own: a reshape that mixed the batch with the pixels would break these.
    np.testing.assert_allclose(model.encode(x[1:])[0], mean[1:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.decode(mean[1:]), decoded[1:], rtol=1e-4, atol=1e-5)
    assert not np.allclose(mean[0], mean[1])


def test_conv_architectures_need_sizes_their_strides_divide():
    with pytest.raises(UserError, match=r"divisible by 4. Received: image_shape=\(30, 30, 1\)"):
        VAE((30, 30, 1), architecture="conv")
    with pytest.raises(UserError, match=r"'conv-64' architecture needs image height and width divisible by 16. "
                                        r"Received: image_shape=\(56, 56, 1\)"):
        VAE((56, 56, 1), architecture="conv-64")
    with pytest.raises(UserError, match=r"'broadcast-64' architecture needs image height and width divisible by 16"):
        VAE((56, 56, 1), architecture="broadcast-64")


def test_bad_constructor_arguments_repeat_the_value():
    with pytest.raises(UserError, match="Received: latent_dim=0"):
        VAE((28, 28, 1), latent_dim=0)
    with pytest.raises(UserError, match="Received: beta=-1"):
        VAE((28, 28, 1), beta=-1)
    with pytest.raises(UserError, match="Unknown architecture 'resnet'. Valid architectures: broadcast-64, conv, conv-64, conv-small, conv1d, mlp, mlp-200-tanh, mlp-gated"):
        VAE((28, 28, 1), architecture="resnet")


def test_sample_is_reproducible_for_a_seed():
    model = VAE((28, 28, 1), latent_dim=3)
    x1, z1 = model.sample(4, seed=7)
    x2, z2 = model.sample(4, seed=7)
    _, z3 = model.sample(4, seed=8)
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(x1, x2)
    assert not np.allclose(z1, z3)


def test_mixed_bfloat16_keeps_the_loss_in_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = VAE((28, 28, 1), latent_dim=3)
        terms = model.compute_terms(binary_batch())
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.encoder.layers[1].compute_dtype == "bfloat16"
    assert all(terms[k].dtype == tf.float32 for k in ("elbo", "kl", "reconstruction_loss"))


def test_a_checkpoint_interrupted_mid_write_is_ignored_and_resume_restores_state(tmp_path):
    from keras_vae import callbacks

    model = VAE((28, 28, 1), latent_dim=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    saver = callbacks.EpochCheckpoint(str(tmp_path), config={"latent_dim": 3})
    saver.set_model(model)
    x = binary_batch()
    for epoch in range(3):
        model.fit(x, batch_size=8, epochs=1, verbose=0)
        saver.on_epoch_end(epoch, {"loss": float(epoch)})
    assert [os.path.basename(p) for p in callbacks.checkpoints(str(tmp_path))] == ["epoch-002", "epoch-003"]
    # A kill during the next write leaves only a temporary folder (and maybe a partial file).
    partial = tmp_path / ".tmp-epoch-004-abc"
    partial.mkdir()
    (partial / "model.weights.h5").write_bytes(b"\x89HDF half")
    assert callbacks.latest_checkpoint(str(tmp_path)).endswith("epoch-003")

    fresh = VAE((28, 28, 1), latent_dim=3)
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3))
    state = callbacks.restore_checkpoint(fresh, callbacks.latest_checkpoint(str(tmp_path)))
    assert state["epoch"] == 3 and state["history"]["loss"] == [0.0, 1.0, 2.0]
    assert int(fresh.optimizer.iterations) == int(model.optimizer.iterations) == 6
    np.testing.assert_array_equal(fresh.seed_generator.state.numpy(), model.seed_generator.state.numpy())
    for a, b in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_default_kl_warmup_spans_half_the_run(tiny_npz, tmp_path):
    import json

    from keras_vae.config import FitConfig
    from keras_vae.train import fit

    # 96 images, 10% held out: 86 to train, 2 whole batches of 32 per epoch; 4 epochs = 8 steps.
    config = FitConfig(dataset=tiny_npz, epochs=4, batch_size=32, latent_dim=2, run_dir=str(tmp_path / "run"),
                       export=False, jit_compile="off")
    history = fit(config, verbose=0, log=lambda *_: None)["history"]
    # β = (step + 1) / 4 for steps 0..3, then 1: epoch means 0.375, 0.875, 1, 1.
    assert history["beta"] == pytest.approx([0.375, 0.875, 1.0, 1.0])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kl_warmup_steps"] is None
    assert FitConfig(kl_warmup_steps=100).model_hyperparameters()["kl_warmup_steps"] == 100
    assert VAE.resolve_hyperparameters({"kl_warmup_steps": None}, 1000)["kl_warmup_steps"] == 500


def test_spatial_broadcast_tiles_the_code_beside_the_grid_coordinates_and_survives_saving(tmp_path):
    from keras_vae.networks import SpatialBroadcast

    z = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    out = SpatialBroadcast(4, 5)(z).numpy()
    assert out.shape == (2, 4, 5, 5)
    np.testing.assert_array_equal(out[..., :3], np.broadcast_to(z[:, None, None, :], (2, 4, 5, 3)))
    # The last two channels are x (along the width) and y (along the height), each from -1 to 1.
    np.testing.assert_allclose(out[0, 0, :, 3], np.linspace(-1, 1, 5), atol=1e-6)
    np.testing.assert_allclose(out[0, :, 0, 4], np.linspace(-1, 1, 4), atol=1e-6)
    np.testing.assert_array_equal(out[0, ..., 3:], out[1, ..., 3:])  # the same grid for every example
    model = VAE((32, 32, 1), latent_dim=4, architecture="broadcast-64")
    codes = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    model.save(tmp_path / "broadcast.keras")
    restored = keras.saving.load_model(tmp_path / "broadcast.keras")
    np.testing.assert_allclose(restored.decode(codes), model.decode(codes), atol=1e-6)


def test_gated_dense_is_a_linear_unit_times_a_sigmoid_gate_and_survives_saving(tmp_path):
    from keras_vae.networks import GatedDense

    layer = GatedDense(3)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    h = layer(x).numpy()
    kernel, bias = layer.dense.kernel.numpy(), layer.dense.bias.numpy()  # [5, 6]: the linear half, then the gate
    linear, gate = x @ kernel[:, :3] + bias[:3], x @ kernel[:, 3:] + bias[3:]
    np.testing.assert_allclose(h, linear / (1 + np.exp(-gate)), rtol=1e-5, atol=1e-6)
    model = VAE((28, 28, 1), latent_dim=4, architecture="mlp-gated")
    images = binary_batch(2)
    model.save(tmp_path / "gated.keras")
    restored = keras.saving.load_model(tmp_path / "gated.keras")
    np.testing.assert_allclose(restored.encode(images)[0], model.encode(images)[0], atol=1e-6)


class Trajectory(keras.callbacks.Callback):
    """The trainable weights after every training step."""

    def on_train_begin(self, logs=None):
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([w.numpy() for w in self.model.trainable_variables])


def test_weight_ema_saves_the_moving_average_of_the_weights_and_resumes_it(tiny_npz, tmp_path):
    from keras_vae.config import FitConfig
    from keras_vae.runs import load_run
    from keras_vae.train import fit

    # 86 training images, 2 whole batches of 32 per epoch: 4 steps, then 2 more when resumed to 3 epochs.
    config = FitConfig(dataset=tiny_npz, epochs=2, batch_size=32, latent_dim=2, run_dir=str(tmp_path / "run"),
                       export=False, jit_compile="off", weight_ema=0.6, learning_rate=0.01)
    steps = []
    for epochs in (2, 3):
        trajectory = Trajectory()
        result = fit(config.replace(epochs=epochs), verbose=0, log=lambda *_: None, extra_callbacks=(trajectory,))
        steps += trajectory.steps
        average = steps[0]  # Keras's average starts at the first step's weights
        for weights in steps[1:]:
            average = [0.6 * a + 0.4 * w for a, w in zip(average, weights)]
        _, saved = load_run(str(tmp_path / "run"))
        for got, want in zip(saved.trainable_variables, average):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
        assert max(np.abs(a - w).max() for a, w in zip(average, steps[-1])) > 1e-3  # not the last step's weights
        # The run's summary is the averaged model's, not its last epoch's (the history keeps the raw weights').
        assert result["val_elbo"] == result["validation"]["elbo"] != result["history"]["val_elbo"][-1]
    assert len(steps) == 6
