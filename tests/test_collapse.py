"""Posterior collapse: the pixelcnn decoder (exact, causal, normalized), the I(x; z) estimator, and a
strong decoder that collapses without a remedy and does not with one."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vae import metrics
from keras_vae.config import FitConfig
from keras_vae.errors import UserError
from keras_vae.models.family import BetaVAE
from keras_vae.models.vae import VAE
from keras_vae.pixel_decoder import CONDITION_CHANNELS, PixelCNNLikelihood, index_pixels, pixel_indices


def likelihood(shape, layers=3, **kwargs):
    keras.utils.set_random_seed(0)  # a fixed initialization: no ReLU-dead path by chance
    layer = PixelCNNLikelihood(shape, num_layers=layers, filters=16, **kwargs)
    features = tf.random.stateless_normal([1, *shape[:2], CONDITION_CHANNELS], seed=[1, 2])
    return layer, features


def all_images(shape):
    """Every binary image of `shape` [2^(H·W·C), H, W, C]."""
    size = int(np.prod(shape))
    return np.array(list(itertools.product([0.0, 1.0], repeat=size)), np.float32).reshape(-1, *shape)


@pytest.mark.parametrize("shape", [(3, 3, 1), (2, 2, 2)])
def test_pixelcnn_likelihood_sums_to_one_over_every_image(shape):
    layer, features = likelihood(shape)
    images = all_images(shape)
    log_probs = layer(tf.repeat(features, len(images), axis=0)).log_prob(images)
    assert float(tf.reduce_logsumexp(log_probs)) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("shape", [(4, 5, 1), (3, 4, 2)])
def test_pixelcnn_decoder_is_causal_in_raster_order(shape):
    layer, features = likelihood(shape, layers=4)
    rng = np.random.default_rng(0)
    x = (rng.random((1, *shape)) < 0.5).astype(np.float32)
    base = layer(features).logits(x).numpy().reshape(-1, layer.num_values)
    height, width, _ = shape
    for j in range(height * width):
        changed = x.copy()
        changed[0, j // width, j % width] = 1 - changed[0, j // width, j % width]
        logits = layer(features).logits(changed).numpy().reshape(-1, layer.num_values)
        moved = np.abs(logits - base).max(axis=1) > 1e-6
        assert not moved[: j + 1].any(), f"flipping pixel {j} moved logits at {np.flatnonzero(moved[: j + 1])}"
        if j + 1 < height * width:  # the next pixel reads it (the receptive field covers these small grids)
            assert moved[j + 1]


def test_pixelcnn_draws_follow_its_likelihood():
    shape = (2, 2, 1)
    layer, features = likelihood(shape)
    images = all_images(shape)
    probabilities = np.exp(layer(tf.repeat(features, len(images), axis=0)).log_prob(images).numpy())
    draws = layer(tf.repeat(features, 4000, axis=0)).sample(tf.constant([3, 4])).numpy()
    codes = draws.reshape(len(draws), -1) @ (2 ** np.arange(3, -1, -1))  # image index in `all_images` order
    frequencies = np.bincount(codes.astype(int), minlength=len(images)) / len(draws)
    assert np.abs(frequencies - probabilities).max() < 0.03
    again = layer(tf.repeat(features, 4000, axis=0)).sample(tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(draws, again)  # stateless in its seed


def test_pixel_indices_round_trip():
    x = (np.random.default_rng(1).random((2, 3, 4, 3)) < 0.5).astype(np.float32)
    indices = pixel_indices(x)
    assert indices.numpy().max() < 8 and indices.numpy()[0, 0, 0] == int(x[0, 0, 0] @ [1, 2, 4])
    np.testing.assert_array_equal(index_pixels(indices, 3).numpy(), x)


def test_decoder_dropout_hides_earlier_pixels_in_training_only():
    shape = (3, 3, 1)
    layer, features = likelihood(shape, dropout=0.999999)
    images = all_images(shape)[[0, 5, 300, 511]]
    condition = tf.repeat(features, len(images), axis=0)
    trained = layer(condition, training=True).logits(images).numpy()
    np.testing.assert_allclose(trained, np.broadcast_to(trained[:1], trained.shape), atol=1e-5)  # all withheld
    evaluated = layer(condition).logits(images).numpy()
    assert np.abs(evaluated - evaluated[:1]).max() > 1e-3


def test_pixelcnn_decoder_needs_binary_pixels():
    with pytest.raises(UserError, match="--decoder pixelcnn models binary pixels.*--binarize none"):
        FitConfig(decoder="pixelcnn", binarize="none")
    with pytest.raises(UserError, match="--likelihood gaussian"):
        FitConfig(decoder="pixelcnn", likelihood="gaussian")


def test_vae_with_the_pixelcnn_decoder_bounds_use_its_exact_likelihood():
    model = VAE(image_shape=(4, 4, 1), latent_dim=2, decoder="pixelcnn", decoder_layers=2, decoder_filters=4)
    x = tf.cast(tf.random.stateless_uniform((3, 4, 4, 1), seed=[0, 1]) < 0.5, tf.float32)
    log_weights, _ = model.importance_log_weights(x, 5, tf.constant([1, 2]))
    z = model.posterior(x).sample(5, seed=tf.constant([1, 2]))  # the same draws
    expected = [model.likelihood(z[k]).log_prob(x) + model.prior().log_prob(z[k]) - model.posterior(x).log_prob(z[k])
                for k in range(5)]
    np.testing.assert_allclose(log_weights.numpy(), np.stack(expected), rtol=1e-5, atol=1e-4)
    images, _ = model.sample(2, seed=3)
    assert set(np.unique(images.numpy())) <= {0.0, 1.0}


# ------------------------------------------------------------------ I(x; z)
@pytest.mark.parametrize("a, s, dims", [(1.0, 0.5, 2), (0.5, 1.0, 1), (0.0, 0.7, 3)])
def test_mutual_information_of_a_linear_gaussian_encoder(a, s, dims):
    # x ~ N(0, I), q(z|x) = N(a x, s² I): the aggregate posterior is N(0, (a² + s²) I), so
    # I(x; z) = (dims / 2) log((a² + s²) / s²).
    x = np.random.default_rng(2).standard_normal((5000, dims))
    estimate = metrics.posterior_mutual_information(a * x, np.full_like(x, s))
    assert estimate == pytest.approx(dims / 2 * np.log((a * a + s * s) / (s * s)), abs=0.04)


def test_mixture_density_matches_a_direct_sum():
    rng = np.random.default_rng(3)
    z, loc, scale = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)), rng.random((5, 3)) + 0.2
    log_normal = -0.5 * (((z[:, None] - loc) / scale) ** 2 + np.log(2 * np.pi * scale**2)).sum(-1)  # (7, 5)
    expected = np.log(np.exp(log_normal).mean(axis=1))
    np.testing.assert_allclose(metrics.gaussian_mixture_log_density(z, loc, scale, rows=3), expected, rtol=1e-10)


def test_tensorboard_code_statistics_read_every_image(tmp_path):
    from keras_vae.callbacks import CODE_BATCH, Summaries

    model = VAE(image_shape=(4, 4, 1), latent_dim=3)
    images = np.random.default_rng(4).random((CODE_BATCH * 2 + 7, 4, 4, 1)).astype(np.float32)
    summaries = Summaries(str(tmp_path), images, None, ())
    summaries.set_model(model)
    loc, scale = model.encode(images)
    assert summaries.code_statistics() == {
        "mutual_information": pytest.approx(metrics.posterior_mutual_information(loc.numpy(), scale.numpy()), rel=1e-5),
        "active_units": metrics.active_units(loc.numpy())[0]}
    assert len(summaries.images) == 8


# ------------------------------------------------------------------ collapse
def striped_images(num=1000, seed=0):
    """8×8 images whose rows are each all 0 or all 1 at random (8 bits a picture), 2% of pixels flipped:
    a PixelCNN reads a row off its first pixel, so z is worth nothing to it."""
    rng = np.random.default_rng(seed)
    x = np.broadcast_to(rng.random((num, 8, 1, 1)) < 0.5, (num, 8, 8, 1))
    return np.where(rng.random(x.shape) < 0.02, ~x, x).astype(np.float32)


def train_on_stripes(model_class=VAE, **kwargs):
    keras.utils.set_random_seed(0)
    model = model_class(image_shape=(8, 8, 1), latent_dim=4, decoder="pixelcnn", decoder_layers=6, decoder_filters=16,
                kl_warmup_steps=0, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    x = striped_images()
    history = model.fit(x, batch_size=100, epochs=10, verbose=0).history
    loc, scale = model.encode(x)
    return history["kl"][-1], metrics.posterior_mutual_information(loc.numpy(), scale.numpy())


def test_a_strong_decoder_collapses_and_decoder_dropout_prevents_it():
    kl, information = train_on_stripes()
    assert kl < 1.0 and information < 0.5, (kl, information)
    kl, information = train_on_stripes(decoder_dropout=0.9)
    assert kl > 2.0 and information > 1.5, (kl, information)


def test_beta_vae_capacity_holds_a_collapsing_decoder_at_its_rate():
    """The controlled-capacity objective γ|KL − C| (Burgess et al. 2018) with the decoder that collapses above:
    the KL is held near C = 3 nats. It buys a rate, not information: the mean KL is I(x; z) plus
    KL(q(z) ‖ p(z)), and here most of it is the second (measured: I(x; z) ≈ 0.5 nats)."""
    kl, information = train_on_stripes(model_class=BetaVAE, beta=20.0, capacity_max=3.0, capacity_steps=20)
    assert abs(kl - 3.0) < 0.5 and information < kl, (kl, information)


# ------------------------------------------------------------------ δ-VAE
@pytest.mark.parametrize("delta", [0.01, 1.0, 10.0, 200.0])
def test_committed_rate_scale_solves_its_equation(delta):
    from keras_vae.losses import committed_rate_scale

    scale = committed_rate_scale(delta)
    assert 0 < scale < 1 and 0.5 * (scale**2 - 1 - np.log(scale**2)) == pytest.approx(delta, rel=1e-9)


def test_delta_vae_kl_is_at_least_delta_for_any_encoder_output():
    from keras_vae.models.delta_vae import DeltaVAE

    model = DeltaVAE(image_shape=(4, 4, 1), latent_dim=5, delta=3.0)
    rng = np.random.default_rng(5)
    params = tf.constant(np.concatenate([rng.normal(0, 1e-3, (500, 5)), rng.normal(0, 30, (500, 5))], 1), tf.float32)
    posterior = model.posterior_layer(params)  # tiny means, scales from ~0 to the bound
    kl = tfp_kl(posterior, model.prior()).numpy()
    assert kl.min() >= 3.0 - 1e-4 and kl.min() < 3.05  # the bound is reached at the largest scale
    params = tf.constant(rng.normal(0, 5, (500, 10)), tf.float32)
    assert tfp_kl(model.posterior_layer(params), model.prior()).numpy().min() >= 3.0 - 1e-4


def tfp_kl(posterior, prior):
    import tensorflow_probability as tfp

    return tfp.distributions.kl_divergence(posterior, prior)


def test_delta_vae_keeps_its_committed_rate_under_a_collapsing_decoder():
    from keras_vae.models.delta_vae import DeltaVAE

    keras.utils.set_random_seed(0)
    model = DeltaVAE(image_shape=(8, 8, 1), latent_dim=4, delta=4.0, decoder="pixelcnn", decoder_layers=6,
                     decoder_filters=16, kl_warmup_steps=0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    history = model.fit(striped_images(), batch_size=100, epochs=3, verbose=0).history
    assert min(history["kl"]) >= 4.0 - 1e-3


# ------------------------------------------------------------------ aggressive encoder (He et al. 2019)
def compiled(model_class=VAE, **kwargs):
    keras.utils.set_random_seed(0)
    model = model_class(image_shape=(8, 8, 1), latent_dim=3, kl_warmup_steps=0, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


def changed_by_one_step(model, phase, data, reset=True):
    """(paths of the trainable variables that one step of `phase` moved, the step's logs)."""
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    if reset:
        model.reset_metrics()
    logs = model.phase_train_function(phase)(iter(tf.data.Dataset.from_tensors(data).repeat()))
    after = {v.path: v.numpy() for v in model.trainable_variables}
    return {path for path in before if not np.array_equal(before[path], after[path])}, logs


def paths(layers):
    return {v.path for layer in layers for v in layer.trainable_variables}


@pytest.mark.parametrize("model_name, settings", [
    ("vae", {"prior": "mog", "decoder": "pixelcnn", "decoder_layers": 2, "decoder_filters": 8}),
    ("vae", {"prior": "vamp", "prior_components": 2, "likelihood": "gaussian", "dequantize": "variational"}),
    ("hvae", {}), ("cvae", {"num_classes": 3}),
])
def test_training_phases_update_only_their_own_variables(model_name, settings):
    from keras_vae.models import get_model_class

    model = compiled(get_model_class(model_name), aggressive_encoder=True, **settings)
    x = striped_images(64)
    data = (x, np.arange(64) % 3) if model.uses_labels else x
    everything = {v.path for v in model.trainable_variables}
    inference = paths(model.inference_layers())
    if model_name == "hvae":  # the top-down path is p(z1 | z2): generative, though inference reads it
        assert paths([model.top_down]) and not paths([model.top_down]) & inference
    if settings.get("prior", "normal") != "normal":  # a learned prior is generative, the dequantizer inference
        assert {v.path for v in model.trainable_variables if "prior" in v.path} <= everything - inference
    if settings.get("dequantize") == "variational":
        assert paths([model.dequantizer]) <= inference
    assert paths([model.encoder]) <= inference < everything
    # A phase moves only its own variables (some with a zero first gradient behind a zero-initialized
    # output layer may stay put), and every one of its network's.
    moved, logs = changed_by_one_step(model, "inference", data)
    assert paths([model.encoder]) <= moved <= inference
    # An inference-only step keeps its own Adam step count; the optimizer's counts the decoder's updates.
    assert int(model.inference_iterations.numpy()) == 1 and int(model.optimizer.iterations.numpy()) == 0
    first = float(np.asarray(logs["loss"]))
    moved, logs = changed_by_one_step(model, "generative", data, reset=False)
    assert paths([model.decoder]) <= moved <= everything - inference
    assert int(model.inference_iterations.numpy()) == 1 and int(model.optimizer.iterations.numpy()) == 1
    # batch_loss is this step's loss, the tracker the mean of both steps.
    np.testing.assert_allclose(float(np.asarray(logs["loss"])),
                               (first + float(np.asarray(logs["batch_loss"]))) / 2, rtol=1e-5)
    moved, _ = changed_by_one_step(model, "joint", data)
    assert paths([model.encoder, model.decoder]) <= moved and int(model.optimizer.iterations.numpy()) == 2
    with pytest.raises(ValueError, match="phase must be one of"):
        model.phase_variables("decoder")


def aggressive_callback(model, **kwargs):
    from keras_vae.callbacks import AggressiveEncoder

    callback = AggressiveEncoder(striped_images(200), **kwargs)
    callback.set_model(model)
    callback.on_train_begin()
    return callback


def drive(callback, losses):
    """The phases of steps with the given batch losses, as the callback chooses them."""
    phases = []
    for loss in losses:
        callback.on_train_batch_begin(0)
        phases.append(callback.current)
        callback.on_train_batch_end(0, {"batch_loss": loss})
    return phases


def test_aggressive_inner_loop_ends_when_its_loss_stops_falling_or_at_the_cap():
    model = compiled(aggressive_encoder=True)
    callback = aggressive_callback(model, window=3, max_inner_steps=10)
    # Window means 5, 4, 4.5: the third is not below the second, so a decoder step follows.
    phases = drive(callback, [5, 5, 5, 4, 4, 4, 4.5, 4.5, 4.5, 0])
    assert phases == ["inference"] * 9 + ["generative"]
    assert model.train_function is callback.functions["generative"]
    # A loss that keeps falling: the inner loop stops at its cap of 10 steps.
    assert drive(callback, [3, 2, 1, 0, -1, -2, -3, -4, -5, -6, 0, 9]) == ["inference"] * 10 + ["generative", "inference"]
    logs = {"batch_loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert "batch_loss" not in logs and logs["decoder_steps"] == logs["encoder_only_steps"] == 0  # none really ran


def test_aggressive_training_ends_when_the_mutual_information_stops_rising():
    model = compiled(aggressive_encoder=True)
    callback = aggressive_callback(model)
    logs = {}
    callback.on_epoch_end(0, logs)  # from the initial -1e9: I(x; z) rose
    information = callback_information = float(np.asarray(model.aggressive_state)[1])
    expected = metrics.posterior_mutual_information(*(np.asarray(t) for t in model.encode(callback.images)))
    assert logs["aggressive"] == 1.0 and callback_information == pytest.approx(expected, rel=1e-5)
    callback.on_epoch_end(1, logs)  # the same weights: not above the last epoch's, so aggressive training ends
    assert logs["aggressive"] == 0.0 and float(np.asarray(model.aggressive_state)[1]) == pytest.approx(information)
    assert drive(callback, [1.0, 2.0]) == ["joint", "joint"] and model.train_function is callback.plain
    model.aggressive_state.assign([0.0, 1e9])  # no longer measured: the state stays
    callback.on_epoch_end(2, logs)
    assert logs["aggressive"] == 0.0 and float(np.asarray(model.aggressive_state)[1]) == 1e9


def test_aggressive_encoder_refuses_several_steps_per_execution():
    with pytest.raises(UserError, match="--aggressive-encoder chooses the phase of every step.*--steps-per-execution 4"):
        FitConfig(aggressive_encoder=True, steps_per_execution=4)
    assert FitConfig(aggressive_encoder=True).aggressive_encoder


def test_a_recompiled_model_gets_new_phase_functions_and_still_loads_compiled(tmp_path):
    model = compiled(aggressive_encoder=True)
    first = model.phase_train_function("inference")
    assert model.phase_train_function("inference") is first
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert model.phase_train_function("inference") is not first
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").compiled  # compile() is not overridden
