"""The discrete-code models (vq_vae, vq_vae2): straight-through training, the two levels, `fit-prior` end to
end with its exports, and the mistakes users make."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import invoke, tiny_images, untrained_vae_run
from keras_vae.config import FitConfig
from keras_vae.models import build_model


def make(name="vq_vae", shape=(28, 28, 1), **extra):
    keras.utils.set_random_seed(1)  # the same codebook whatever ran before
    defaults = dict(latent_dim=4) if name == "vq_vae" else dict(channels=16, residual_channels=8)
    config = FitConfig(model=name, codebook_size=8, codebook_dim=3, seed=1, **{**defaults, **extra})
    model = build_model(config, shape)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    return model


def images(num=32):
    return (tiny_images(num) / 255).astype(np.float32)


def test_straight_through_passes_gradients_to_the_encoder_and_the_codebook_moves():
    model = make(codebook_restart=False)
    x = images()
    with tf.GradientTape() as tape:
        reconstruction = tf.reduce_mean(model.compute_terms(x, training=True)["reconstruction_loss"])
    encoder_gradients = tape.gradient(reconstruction, model.encoder.trainable_variables)
    # argmin has no gradient: without the straight-through path these would be None.
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in encoder_gradients)
    before = model.quantizer.codebook.numpy().copy()
    history = model.fit(x, batch_size=16, epochs=2, verbose=0).history
    moved = np.abs(model.quantizer.codebook.numpy() - before).max(axis=1) > 0
    assert moved.sum() >= 1 and {"vq_loss", "perplexity", "used_codes"} <= set(history)
    assert 1 <= history["used_codes"][-1] <= 8 and 1 <= history["perplexity"][-1] <= 8


@pytest.mark.parametrize("shape, top, bottom", [((28, 28, 1), (4, 4), (8, 8)), ((64, 64, 3), (8, 8), (16, 16)),
                                                ((8, 12, 1), (1, 2), (2, 4))])
def test_vq_vae2_pads_to_eighths_and_decodes_both_levels_to_the_input_shape(shape, top, bottom):
    model = make("vq_vae2", shape)
    assert model.grids == {"top": top, "bottom": bottom}
    x = tf.random.uniform((2, *shape), seed=1)
    codes = model.encode_indices(x)
    assert codes["top"].shape == (2, *top) and codes["bottom"].shape == (2, *bottom)
    assert model.decode_indices(codes).shape == (2, *shape) and model.reconstruct(x).shape == (2, *shape)
    np.testing.assert_allclose(model.decode(model.encode(x)[0]), model.decode_indices(codes), atol=1e-6)
    assert model.code_dim == (math.prod(top) + math.prod(bottom)) * 3


def test_vq_vae2_reads_the_top_codes_in_both_the_bottom_encoder_and_the_decoder():
    model = make("vq_vae2")
    model.fit(images(), batch_size=16, epochs=1, verbose=0)  # codebooks away from their initial values
    x = tf.constant(images(4))
    codes = model.encode_indices(x)
    other_top = dict(codes, top=(codes["top"] + 1) % 8)
    assert float(tf.reduce_max(tf.abs(model.decode_indices(other_top) - model.decode_indices(codes)))) > 1e-4
    other_bottom = dict(codes, bottom=(codes["bottom"] + 1) % 8)
    assert float(tf.reduce_max(tf.abs(model.decode_indices(other_bottom) - model.decode_indices(codes)))) > 1e-4
    h_bottom, _ = model.encoder(x)
    z = [model.bottom_head([h_bottom, model.quantizer_top.lookup(top)]) for top in (codes["top"], other_top["top"])]
    assert float(tf.reduce_max(tf.abs(z[0] - z[1]))) > 1e-4


def test_each_level_picks_its_nearest_codebook_entry():
    model = make("vq_vae2")
    model.fit(images(), batch_size=16, epochs=1, verbose=0)
    x = tf.constant(images(6))
    codes = model.encode_indices(x)
    h_bottom, z_top = model.encoder(x)

    def brute_force(z, codebook):
        return np.argmin(((np.asarray(z)[..., None, :] - codebook.numpy()) ** 2).sum(-1), axis=-1)

    np.testing.assert_array_equal(codes["top"], brute_force(z_top, model.quantizer_top.codebook))
    z_bottom = model.bottom_head([h_bottom, model.quantizer_top.lookup(codes["top"])])
    np.testing.assert_array_equal(codes["bottom"], brute_force(z_bottom, model.quantizer_bottom.codebook))


def test_fsq_models_have_no_codebook_and_no_vq_loss():
    model = make("vq_vae2", quantizer="fsq", fsq_levels="4,3")
    assert model.num_codes == 12 and not any("codebook" in w.path for w in model.weights)
    terms = model.compute_terms(tf.constant(images(8)), training=True)
    np.testing.assert_array_equal(terms["vq_loss"], 0.0)
    assert 1 <= float(terms["used_codes_bottom"]) <= 12


# ------------------------------------------------------------- fit-prior, end to end
@pytest.fixture(scope="module")
def vq_run(tiny_run):
    root, _ = tiny_run("vq", "--model", "vq_vae", "--latent-dim", 4, "--codebook-size", 16, "--codebook-dim", 4)
    return root, invoke


@pytest.fixture(scope="module")
def vq2_run(tiny_run):
    root, _ = tiny_run("vq2", "--model", "vq_vae2", "--channels", 16, "--residual-channels", 8,
                       "--codebook-size", 8, "--codebook-dim", 4, "--prior-layers", 3, "--prior-filters", 16)
    return root, invoke


def fit_prior_and_compare(root, name, uniform_kl):
    before = json.loads(invoke("evaluate", root / "run", "--iw-samples", 2, "--json").output)
    assert before["kl"] == pytest.approx(uniform_kl, rel=1e-5)  # uniform prior: Σ h·w·log K
    result = invoke("fit-prior", root / "run", "--epochs", 15, "--batch-size", 32)
    assert result.exit_code == 0, result.output
    assert f"exports/{name}/2" in result.output
    after = json.loads(invoke("evaluate", root / "run", "--iw-samples", 2, "--json").output)
    assert after["kl"] < before["kl"] and after["elbo"] > before["elbo"]
    assert after["reconstruction_loss"] == pytest.approx(before["reconstruction_loss"], rel=1e-5)
    assert after["nll_iw"] == pytest.approx(-after["elbo"], rel=1e-5)  # a point-mass posterior
    from keras_vae.runs import load_run

    _, model = load_run(str(root / "run"))
    assert float(model.prior_fitted) == 1.0
    return model, json.loads((root / "run" / "prior_history.json").read_text()), after


def test_fit_prior_tightens_the_bound_and_sampling_goes_through_it(vq_run):
    root, _ = vq_run
    model, history, _ = fit_prior_and_compare(root, "vq", 4 * math.log(16))
    assert history["prior"]["val_loss"][-1] < 4 * math.log(16)
    loaded = tf.saved_model.load(str(root / "exports" / "vq" / "2"))
    sample = loaded.signatures["sample"](num_samples=tf.constant(3), seed=tf.constant(5))
    expected_x, expected_codes = model.sample(3, seed=5)
    np.testing.assert_array_equal(sample["indices"], expected_codes[""])
    np.testing.assert_allclose(sample["x_mean"], expected_x, atol=1e-5)
    assert invoke("sample", root / "run", "--out", root / "s.png", "--num", 4).exit_code == 0


def test_vq_vae2_priors_fit_top_then_bottom_and_its_export_speaks_in_both_maps(vq2_run):
    root, _ = vq2_run
    model, history, after = fit_prior_and_compare(root, "vq2", (4 * 4 + 8 * 8) * math.log(8))
    assert set(history) == {"prior_top", "prior_bottom"}
    assert history["prior_top"]["val_loss"][-1] < 16 * math.log(8)
    assert history["prior_bottom"]["val_loss"][-1] < 64 * math.log(8)
    assert after["kl"] == pytest.approx(history["prior_top"]["val_loss"][-1] + history["prior_bottom"]["val_loss"][-1],
                                        rel=0.02)  # the test split, by the evaluation and by fit-prior
    levels = after["code_levels"]  # the rate of each level, in bits, adds up to the KL in nats
    assert (levels["top"]["rate_bits"] + levels["bottom"]["rate_bits"]) * math.log(2) == pytest.approx(after["kl"],
                                                                                                      rel=1e-4)
    assert 1 <= levels["bottom"]["used_codes"] <= 8 and levels["top"]["usage"] == levels["top"]["used_codes"] / 8
    loaded = tf.saved_model.load(str(root / "exports" / "vq2" / "2"))
    x = tf.constant(images(5))
    codes = loaded.signatures["encode"](x=x)
    assert set(codes) == {"indices_top", "indices_bottom"} and codes["indices_bottom"].shape == (5, 8, 8)
    np.testing.assert_array_equal(codes["indices_top"], model.encode_indices(x)["top"])
    decoded = loaded.signatures["decode"](**codes)["x_mean"]
    np.testing.assert_allclose(decoded, model.reconstruct(x), atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`indices_bottom` must hold code indices in 0..7"):
        loaded.signatures["decode"](indices_top=codes["indices_top"], indices_bottom=tf.fill([5, 8, 8], 8))
    sample = loaded.signatures["sample"](num_samples=tf.constant(3), seed=tf.constant(5))
    expected_x, expected_codes = model.sample(3, seed=5)
    np.testing.assert_array_equal(sample["indices_bottom"], expected_codes["bottom"])
    np.testing.assert_allclose(sample["x_mean"], expected_x, atol=1e-5)
    again = loaded.signatures["sample"](num_samples=tf.constant(3), seed=tf.constant(5))
    np.testing.assert_array_equal(again["indices_top"], sample["indices_top"])  # stateless in the seed
    assert list((root / "run" / "logs" / "prior").glob("events.out.tfevents.*"))  # fit-prior's curves

    # The way TF Serving's C++ loader reads it: encode, then decode the indices, by tensor name.
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        signatures = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(root / "exports" / "vq2" / "2")
                                                          ).signature_def

        def run(name, feeds):
            info = signatures[name]
            return session.run({k: t.name for k, t in info.outputs.items()},
                               {info.inputs[k].name: v for k, v in feeds.items()})

        codes_v1 = run("encode", {"x": x.numpy()})
        decoded_v1 = run("decode", codes_v1)["x_mean"]
        reconstructed_v1 = run("reconstruct", {"x": x.numpy()})
    np.testing.assert_array_equal(codes_v1["indices_bottom"], codes["indices_bottom"])
    np.testing.assert_allclose(decoded_v1, reconstructed_v1["x_mean"], atol=1e-6)


def test_swapping_levels_mixes_one_images_top_with_anothers_bottom(vq2_run):
    from keras_vae.explore import level_swap_grid
    from keras_vae.runs import load_run

    root, _ = vq2_run
    _, model = load_run(str(root / "run"))
    x = images(3)
    grid = level_swap_grid(model, x, x)  # swapping an image's levels with its own: its reconstruction
    rows = [grid[2 + r * 30 : 30 + r * 30, 2:30, 0] for r in range(4)]  # make_grid: 28-pixel cells, 2-pixel gaps
    reconstruction = np.asarray(model.reconstruct(tf.constant(x)))[0, :, :, 0]
    for row in (2, 3):
        np.testing.assert_allclose(rows[row], reconstruction, atol=1e-5)
    result = invoke("swap-levels", root / "run", "--out", root / "swap.png", "--num", 4)
    assert result.exit_code == 0 and (root / "swap.png").exists()


def test_training_further_after_fit_prior_is_refused(vq_run):
    root, _ = vq_run
    assert (root / "run" / "prior_history.json").exists()  # the fit-prior test ran first
    result = invoke("fit", "--dataset", root / "tiny.npz", "--epochs", 3, "--batch-size", 32, "--run-dir",
                    root / "run", "--model", "vq_vae", "--latent-dim", 4, "--codebook-size", 16, "--codebook-dim", 4,
                    "--no-export")
    assert result.exit_code == 2 and "would leave that prior stale" in result.output


@pytest.mark.parametrize("args, message", [
    (["fit-prior", "VAE_RUN"], "fit-prior trains the code priors of a discrete-code run"),
    (["fit-prior", "RUN", "--epochs", 0], "--epochs must be a positive integer"),
    (["fit-prior", "RUN", "--method", "aggregate"], "--method aggregate refits a learned mixture prior"),
    (["traverse", "RUN", "--out", "OUT"], "has a discrete one"),
    (["swap-levels", "RUN", "--out", "OUT"], "mixes the two code levels of a vq_vae2 model"),
    (["fit", "--model", "vq_vae", "--codebook-size", 0], "--codebook-size must be a positive integer"),
    (["fit", "--model", "vq_vae2", "--architecture", "conv"], "--architecture is not used by the vq_vae2 model"),
    (["fit", "--model", "vq_vae", "--quantizer", "fsq", "--fsq-levels", "8,1"], "--fsq-levels must be"),
])
def test_vq_mistakes_get_a_message_and_status_2(vq_run, tmp_path, args, message):
    root, _ = vq_run
    if "VAE_RUN" in args:
        untrained_vae_run(tmp_path / "vae", root / "tiny.npz")
    names = {"RUN": root / "run", "VAE_RUN": tmp_path / "vae", "OUT": tmp_path / "o.png"}
    result = invoke(*[names.get(a, a) for a in args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
