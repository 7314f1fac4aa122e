"""1-D signals [N, T, C]: the .npz loader, settings made for images refused, and the models train, evaluate
and export on a small synthetic set (signatures take [batch, T, C])."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, config_for
from keras_vae.config import FitConfig
from keras_vae.data.datasets import load_dataset
from keras_vae.data.splits import Split
from keras_vae.errors import UserError
from keras_vae.evaluate import evaluate_model
from keras_vae.export import export_saved_model
from keras_vae.models import build_model, get_model_class, model_names
from keras_vae.train import fit

SHAPE = (16, 2)


def waves(num, seed=0, length=SHAPE[0]):
    """Two-channel sine/cosine pairs of random frequency and phase, with noise: [N, T, 2], and labels (fast
    or slow)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / length
    frequency, phase = rng.uniform(1, 4, (num, 1)), rng.uniform(0, 2 * np.pi, (num, 1))
    x = np.stack([np.sin(2 * np.pi * frequency * t + phase), np.cos(2 * np.pi * frequency * t + phase)], -1)
    return (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32), (frequency[:, 0] > 2.5).astype(np.int32)


def test_npz_signals_load_as_n_t_c_and_grey_images_stay_images(tmp_path):
    x, y = waves(40)
    np.savez(tmp_path / "mono.npz", x=x[..., 0])  # [N, T]: always a signal
    np.savez(tmp_path / "stereo.npz", x=x, kind="signal", y=y)
    np.savez(tmp_path / "grey.npz", x=np.zeros((5, 8, 8), np.uint8))  # [N, H, W]: images
    mono, stereo = load_dataset(str(tmp_path / "mono.npz")), load_dataset(str(tmp_path / "stereo.npz"))
    assert mono.is_signal and mono.image_shape == (16, 1)
    assert stereo.is_signal and stereo.image_shape == (16, 2) and stereo.num_classes == 2
    np.testing.assert_array_equal(stereo.x_train, x)  # real values kept as they are
    grey = load_dataset(str(tmp_path / "grey.npz"))
    assert not grey.is_signal and grey.image_shape == (8, 8, 1)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 16, 2), np.float32), "kind": "sound"}, "kind must be 'image' or 'signal'"),
    ({"x": np.full((4, 16), np.nan, np.float32)}, "contains NaN or infinite values"),
    ({"x": np.zeros((4, 16), np.int16)}, "signals must be float"),
    ({"x": np.zeros((4, 16), np.float32), "x_test": np.zeros((2, 8), np.float32)}, "both splits need one length"),
])
def test_bad_signals_are_refused_with_a_message(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


@pytest.fixture(scope="module")
def signals_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("signals") / "waves.npz"
    x, y = waves(240)
    np.savez(path, x=x[:200], y=y[:200], x_test=x[200:], y_test=y[200:], kind="signal")
    return str(path)


@pytest.mark.parametrize("settings, message", [
    ({"model": "vq_vae2"}, "--model vq_vae2 reads images only"),
    ({"model": "nvae", "likelihood": "gaussian"}, "--model nvae reads images only"),
    ({"likelihood": "logistic_mixture", "binarize": "none"}, "--likelihood logistic_mixture scores 8-bit pixel"),
    ({"binarize": "dynamic"}, "--binarize dynamic needs pixel intensities"),
    ({"likelihood": "bernoulli"}, "--likelihood bernoulli models binary pixels"),
    ({"architecture": "conv-small"}, "'conv-small' architecture reads images"),
])
def test_settings_made_for_images_are_refused_on_signals(signals_npz, tmp_path, settings, message):
    config = FitConfig(dataset=signals_npz, epochs=1, export=False, run_dir=str(tmp_path / "run"), **settings)
    with pytest.raises(UserError, match=message):
        fit(config, verbose=0, log=lambda *_: None)


def test_signals_take_gaussian_unbinarized_defaults_and_conv1d_checks_the_length(signals_npz, tmp_path):
    result = fit(FitConfig(dataset=signals_npz, epochs=1, batch_size=50, latent_dim=3, architecture="conv1d",
                           export=False, run_dir=str(tmp_path / "run")), verbose=0, log=lambda *_: None)
    assert np.isfinite(result["val_elbo"])
    from keras_vae.runs import load_run

    config, model = load_run(result["run_dir"])
    assert (config.likelihood, config.binarize) == ("gaussian", "none")
    assert model.image_shape == SHAPE and model.reconstruct(waves(3)[0]).shape == (3, *SHAPE)
    with pytest.raises(UserError, match="signal length divisible by 8. Received: T=12"):
        build_model(config_for("vae", architecture="conv1d", likelihood="gaussian"), (12, 2))


# The other VAE variants change the loss, not the shapes; vq_vae codes along time, alone and with a label.
TRAINED = ("vae", "iwae", "cvae", "hvae", "ae", "dae", "vq_vae", "vq_vae+label")
EXPORTED = ("vae", "cvae", "hvae", "vq_vae+label")  # plain, labelled, two-level and code-map signatures


def test_the_models_that_read_signals_are_all_but_the_multi_scale_ones():
    readers = {name for name in model_names() if get_model_class(name).reads_signals}
    assert readers == set(model_names()) - {"vq_vae2", "nvae"} and {n.split("+")[0] for n in TRAINED} <= readers


def test_models_train_evaluate_and_export_on_signals(tmp_path):
    import keras

    x, y = waves(64)
    test = Split("test", x[:16], y[:16], None)
    paths = []
    for name in TRAINED:
        keras.utils.set_random_seed(0)
        model_name, _, condition = name.partition("+")
        config = config_for(model_name, architecture="conv1d", likelihood="gaussian", kl_warmup_steps=0,
                            latent_dim=4 if model_name == "vq_vae" else 3, condition=condition or "none")
        model = build_model(config, SHAPE, num_classes=2)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = model.fit(x, y if model.uses_labels else None, batch_size=32, epochs=1, verbose=0).history
        assert np.isfinite(history["loss"][-1]), name
        result = evaluate_model(model, test, iw_samples=4, batch_size=16, progress=False)
        if model.has_elbo:
            assert np.isfinite(result["nll_iw"]) and result["nll_iw"] <= -result["elbo"] + 1.0, (name, result)
        if name in EXPORTED:
            paths.append(export_saved_model(model, str(tmp_path), name.replace("+", "_")))
            labels = np.ones(2, np.int32) if model.uses_labels else None  # as signature_feeds gives
            np.save(paths[-1] + ".expected.npy", np.asarray(model.reconstruct(x[:2], labels)))
    np.save(tmp_path / "waves.npy", x[:2])
    # The exports answer in a TF-Serving-style v1 session, every signature with [batch, T, C] inputs.
    script = f"""
import sys
import numpy as np
import tensorflow as tf
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
from test_hardening import signature_feeds
for path in {paths!r}:
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        for name, info in meta_graph.signature_def.items():
            if name.startswith("__"):
                continue
            feeds = signature_feeds(info)
            if "x" in info.inputs:
                assert feeds["x"].shape[1:] == {SHAPE!r}, (path, name, feeds["x"].shape)
                feeds["x"] = np.load({str(tmp_path / "waves.npy")!r})
            out = session.run({{k: t.name for k, t in info.outputs.items()}},
                              {{info.inputs[k].name: v for k, v in feeds.items()}})
            for key, value in out.items():
                assert np.all(np.isfinite(value)), (path, name, key)
                if key in ("x_mean", "reconstruction"):
                    assert value.shape[1:] == {SHAPE!r}, (path, name, key, value.shape)
            if name == "reconstruct":  # what the model in memory made of the same waves
                np.testing.assert_allclose(out["x_mean"], np.load(path + ".expected.npy"), atol=1e-5)
print("ok", len({paths!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ok {len(paths)}" in result.stdout
