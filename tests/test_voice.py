"""Recordings as data and voice conversion: padding masked out of the likelihood exactly, the categorical
likelihood of μ-law levels, fixed-length examples, codes along time, the speaker embedding, and the CLI
that writes WAV files (sample, reconstruct, convert) and TensorBoard's Audio tab."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from click.testing import CliRunner

from conftest import config_for
from keras_vae.audio import AudioFormat, mu_law_decode, mu_law_levels, read_wav, write_wav
from keras_vae.cli import cli
from keras_vae.data.datasets import load_dataset
from keras_vae.data.pipeline import make_pipeline
from keras_vae.data.splits import Split
from keras_vae.distributions import CategoricalLikelihood, GaussianLikelihood, padding_mask
from keras_vae.evaluate import evaluate_model
from keras_vae.models import build_model

tfd = tfp.distributions
RATE = 8000


# ---------------------------------------------------------------- likelihoods
def test_padding_mask_removes_padded_steps_from_the_likelihood_exactly():
    rng = np.random.default_rng(0)
    loc, x = rng.normal(size=(2, 3, 6, 4)).astype(np.float32)  # [B, T, C]
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1] * 6], np.float32)
    layer = GaussianLikelihood(4, scale=0.7)
    per_value = tfd.Normal(loc, 0.7).log_prob(x).numpy()  # [B, T, C]
    expected = (per_value.sum(-1) * mask).sum(-1)
    with padding_mask(mask):
        np.testing.assert_allclose(layer(loc).log_prob(x).numpy(), expected, rtol=1e-5)
        # K samples of the batch, sample-major (as tf.reshape of [K, B, ...]): the mask repeats.
        tiled = layer(np.concatenate([loc, loc])).log_prob(np.concatenate([x, x])).numpy()
        np.testing.assert_allclose(tiled, np.concatenate([expected, expected]), rtol=1e-5)
    # Padded values do not matter at all; outside the block everything counts.
    with padding_mask(mask):
        changed = np.where(mask[..., None] > 0, x, 1e3)
        np.testing.assert_allclose(layer(loc).log_prob(changed).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(layer(loc).log_prob(x).numpy(), per_value.sum((1, 2)), rtol=1e-5)


def test_categorical_likelihood_scores_mu_law_levels_by_their_softmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 256)).astype(np.float32)  # [B, T, C·K], C = 1
    waveform = rng.uniform(-1, 1, (2, 5)).astype(np.float32)
    x = mu_law_levels(waveform).numpy()[..., None]  # [B, T, 1]
    classes = np.round((x[..., 0] + 1) / 2 * 255).astype(int)
    log_softmax = tf.nn.log_softmax(logits).numpy()
    expected = np.take_along_axis(log_softmax, classes[..., None], -1)[..., 0].sum(-1)
    layer = CategoricalLikelihood(1, 256)
    np.testing.assert_allclose(layer(logits).log_prob(x).numpy(), expected, rtol=1e-5)
    mean = layer.mean(logits).numpy()
    np.testing.assert_allclose(mean[..., 0], (np.exp(log_softmax) * np.linspace(-1, 1, 256)).sum(-1), atol=1e-5)
    # The levels decode to the waveform within one μ-law step.
    np.testing.assert_allclose(mu_law_decode(classes).numpy(), waveform, atol=0.05)


# ---------------------------------------------------------------- examples
def test_audio_format_makes_fixed_length_examples_with_masks_of_the_real_steps():
    t = np.arange(3000) / RATE
    clip, long_clip = np.sin(2 * np.pi * 440 * t).astype(np.float32), np.zeros(20000, np.float32)
    spectra = AudioFormat("logmel", RATE)
    x, mask = spectra.examples([clip, long_clip])
    assert x.shape == (2, spectra.length, 64) == (2, 128, 64) and mask.shape == (2, 128)
    starts = np.arange(128) * spectra.spectrogram.frame_step
    np.testing.assert_array_equal(mask[0], starts < 3000)  # a frame that starts after the clip is padding
    assert mask[1].all()  # a long clip is cut: no padding
    np.testing.assert_allclose(x[0, mask[0] == 0], np.log(spectra.spectrogram.floor), atol=1e-4)
    waves = AudioFormat("waveform", RATE)
    x, mask = waves.examples([clip])
    assert x.shape == (1, waves.num_samples, 1) and mask[0].sum() == 3000
    np.testing.assert_allclose(waves.to_waveforms(x)[0, :3000], clip, atol=0.05)


def tone_folder(root, speakers=("ann", "bob"), per_speaker=10, rate=RATE):
    """WAV files of two 'speakers' (a low and a high voice, glides of random length) in sub-folders."""
    rng = np.random.default_rng(0)
    for index, speaker in enumerate(speakers):
        os.makedirs(os.path.join(root, speaker))
        for i in range(per_speaker):
            t = np.arange(int(rng.uniform(0.2, 0.6) * rate)) / rate
            pitch = (150 if index == 0 else 400) * (1 + 0.5 * t)
            write_wav(os.path.join(root, speaker, f"{i}.wav"), 0.5 * np.sin(2 * np.pi * pitch * t), rate)
    return root


def test_wav_folders_load_as_recordings_with_masks_and_named_labels(tmp_path):
    folder = tone_folder(str(tmp_path / "voices"))
    data = load_dataset(folder, representation="logmel")
    assert data.is_signal and data.image_shape == (128, 64) and data.audio.sample_rate == RATE
    assert data.factor_names == ("label",) and data.factor_values["label"] == ("ann", "bob")
    assert (len(data.x_train), len(data.x_test)) == (18, 2) and data.mask_train.shape == data.x_train.shape[:2]
    assert 0 < data.mask_train.mean() < 1


def test_masked_batches_reach_training_and_evaluation():
    """A deterministic autoencoder's reconstruction loss, from fit's dict batches and from evaluate, is the
    Gaussian log-density summed over the real steps only."""
    import keras

    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 16, 2)).astype(np.float32)
    mask = (np.arange(16)[None, :] < rng.integers(4, 16, (8, 1))).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_model(config_for("ae", architecture="conv1d", likelihood="gaussian", likelihood_scale=1.0,
                                   latent_dim=3), (16, 2))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rebuilt = model.reconstruct(x).numpy()
    per_step = tfd.Normal(rebuilt, 1.0).log_prob(x).numpy().sum(-1)
    expected = -(per_step * mask).sum(-1).mean()
    batches = make_pipeline(x, 8, mask=mask)
    assert set(next(iter(batches))) == {"x", "mask"}
    logs = model.evaluate(batches, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["reconstruction_loss"], expected, rtol=1e-4)
    result = evaluate_model(model, Split("test", x, mask=mask), iw_samples=2, batch_size=4, progress=False)
    np.testing.assert_allclose(result["reconstruction_loss"], expected, rtol=1e-4)


# -------------------------------------------------------- codes along time
def vq_model(**settings):
    import keras

    keras.utils.set_random_seed(0)
    config = config_for("vq_vae", architecture="conv1d", likelihood="gaussian", latent_dim=32, codebook_size=16,
                        **settings)
    return build_model(config, (128, 8), num_classes=3)


def test_vq_vae_codes_on_signals_are_a_row_along_time():
    model = vq_model()
    x = np.random.default_rng(3).normal(size=(2, 128, 8)).astype(np.float32)
    codes = model.encode_indices(x)[""].numpy()
    assert codes.shape == (2, 1, 32) and model.grids[""] == (1, 32)
    late = x.copy()
    late[:, 96:] += 5.0  # a change in the last quarter of the clip
    moved = model.encode_indices(late)[""].numpy()
    np.testing.assert_array_equal(moved[..., :16], codes[..., :16])  # early codes stay: they read early steps
    assert (moved[..., 24:] != codes[..., 24:]).any()
    assert model.decode_indices({"": codes}).shape == (2, 128, 8)


def test_a_speaker_embedding_changes_the_decoded_output_while_the_codes_stay_fixed():
    model = vq_model(condition="label")
    assert model.uses_labels and model.num_classes == 3
    x = np.random.default_rng(4).normal(size=(2, 128, 8)).astype(np.float32)
    codes = model.encode_indices(x)  # the encoder reads no label
    outputs = [model.decode_indices(codes, tf.constant([k, k])).numpy() for k in range(3)]
    assert all(np.abs(outputs[0] - other).max() > 1e-3 for other in outputs[1:])
    np.testing.assert_array_equal(model.encode_indices(x)[""].numpy(), codes[""].numpy())
    with pytest.raises(Exception, match="conditioned on 'label': give its labels"):
        model.decode_indices(codes)


def test_code_rows_need_a_power_of_two_steps_per_code():
    with pytest.raises(Exception, match="T / latent_dim to be a power of 2"):
        build_model(config_for("vq_vae", architecture="conv1d", likelihood="gaussian", latent_dim=24), (128, 8))


# --------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def voice_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("voice")
    folder = tone_folder(str(root / "voices"))
    run_dir = str(root / "run")
    result = CliRunner().invoke(cli, ["fit", "--dataset", folder, "--model", "vq_vae", "--condition", "label",
                                      "--latent-dim", "32", "--codebook-size", "16", "--epochs", "1",
                                      "--batch-size", "4", "--run-dir", run_dir, "--no-export"])
    assert result.exit_code == 0, result.output
    return folder, run_dir


def test_convert_writes_the_recording_in_another_voice_at_its_length(voice_run, tmp_path):
    folder, run_dir = voice_run
    source = os.path.join(folder, "ann", "0.wav")
    out = str(tmp_path / "as_bob.wav")
    result = CliRunner().invoke(cli, ["convert", run_dir, "--input", source, "--speaker", "bob", "--out", out])
    assert result.exit_code == 0, result.output
    waveform, rate = read_wav(out)
    original, _ = read_wav(source)
    assert rate == RATE and len(waveform) == len(original)
    assert np.isfinite(waveform).all() and np.abs(waveform).max() > 0
    # It is the source's codes decoded as bob's (label 1), not ann's, made audible as `convert` says.
    from keras_vae.data.recordings import read_mono
    from keras_vae.listen import GRIFFIN_LIM_ITERATIONS, audio_of, convert_examples, silence_padding
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    audio, _ = audio_of(config)
    x, mask = audio.examples([read_mono(source, audio.sample_rate)[0]])
    as_bob, as_ann = convert_examples(model, x, [1]), convert_examples(model, x, [0])
    assert np.abs(as_bob - as_ann).max() > 1e-3
    expected = audio.to_waveforms(silence_padding(as_bob, mask, audio), GRIFFIN_LIM_ITERATIONS)[0][: len(original)]
    np.testing.assert_allclose(waveform[:, 0], np.clip(expected, -1, 1), atol=2 / 32767)
    refused = CliRunner().invoke(cli, ["convert", run_dir, "--input", source, "--speaker", "carl", "--out", out])
    assert refused.exit_code == 2 and "Unknown label 'carl'. Valid: ann, bob." in refused.output


def test_sample_and_reconstruct_write_wav_files_and_spectrograms(voice_run, tmp_path):
    _, run_dir = voice_run
    result = CliRunner().invoke(cli, ["reconstruct", run_dir, "--out", str(tmp_path), "--num", "2"])
    assert result.exit_code == 0, result.output
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*")))
    assert names == ["original_0.wav", "original_1.wav", "reconstruction_0.wav", "reconstruction_1.wav",
                     "reconstructions.png"]
    original, reconstruction = (read_wav(str(tmp_path / f"{kind}_0.wav"))[0] for kind in ("original", "reconstruction"))
    assert len(original) == len(reconstruction) < AudioFormat().num_samples  # cut to the clip's real length
    result = CliRunner().invoke(cli, ["sample", run_dir, "--out", str(tmp_path), "--num", "3", "--label", "1"])
    assert result.exit_code == 0, result.output
    assert len(glob.glob(str(tmp_path / "sample_*.wav"))) == 3 and os.path.exists(tmp_path / "samples.png")


def test_tensorboard_gets_the_audio_tab(voice_run):
    _, run_dir = voice_run
    tags = set()
    for path in glob.glob(os.path.join(run_dir, "logs", "validation", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value if value.metadata.plugin_data.plugin_name
                        in ("audio", "images"))
    assert {"reconstructions", "samples", "spectrograms"} <= tags


def test_models_without_a_speaker_condition_cannot_convert(tmp_path):
    from keras_vae.errors import UserError
    from keras_vae.listen import check_converter

    with pytest.raises(UserError, match="needs a discrete-code model conditioned on the speaker"):
        check_converter(vq_model())


def test_waveforms_train_under_the_categorical_likelihood_and_play_back_at_their_length(tmp_path):
    folder = tone_folder(str(tmp_path / "voices"), per_speaker=5, rate=2000)  # clips of 1.05 s: 2,096 samples
    run_dir = str(tmp_path / "run")
    result = CliRunner().invoke(cli, ["fit", "--dataset", folder, "--representation", "waveform", "--model", "vq_vae",
                                      "--latent-dim", "131", "--codebook-size", "16", "--epochs", "1", "--run-dir",
                                      run_dir, "--no-export"])
    assert result.exit_code == 0, result.output
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    assert config.likelihood == "categorical" and model.grids[""] == (1, 131)  # 16 samples per code
    data = load_dataset(folder, representation="waveform")
    levels = np.linspace(-1, 1, 256)
    assert data.image_shape == (2096, 1) and np.abs(np.unique(data.x_train)[:, None] - levels).min(1).max() < 1e-6
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(cli, ["reconstruct", run_dir, "--out", str(out), "--num", "1"])
    assert result.exit_code == 0, result.output
    original, _ = read_wav(str(out / "original_0.wav"))
    assert len(original) == int(data.mask_test[0].sum())  # exactly the clip's samples


def test_a_configuration_that_would_binarize_recordings_is_refused(tmp_path):
    from keras_vae.config import FitConfig
    from keras_vae.data.splits import load_split
    from keras_vae.errors import UserError

    folder = tone_folder(str(tmp_path / "voices"), per_speaker=3)
    with pytest.raises(UserError, match="holds signals, which are not binarized"):
        load_split(FitConfig(dataset=folder), "test")  # the declared default, binarize="dynamic"
    split = load_split(FitConfig(dataset=folder, binarize="none"), "test")
    np.testing.assert_array_equal(split.x, load_dataset(folder).x_test)
