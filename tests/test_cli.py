"""`keras-vae` end to end on tiny data, and every user mistake as a message with status 2."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import invoke, keras_vae_process, tiny_images


def event_tags(folder):
    tags = set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    return tiny_run("tiny", "--latent-dim", 3, process=True)


def test_fit_writes_the_run_directory(finished_run):
    root, output = finished_run
    run = root / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["latent_dim"] == 3 and config["epochs"] == 2 and config["dataset"].endswith("tiny.npz")
    history = json.loads((run / "history.json").read_text())
    for name in ("loss", "elbo", "reconstruction_loss", "kl", "beta"):
        assert len(history[name]) == 2 and len(history["val_" + name]) == 2
    assert history["elbo"][1] > history["elbo"][0]
    assert (run / "model.keras").exists()
    assert sorted(os.listdir(run / "checkpoints")) == ["epoch-001", "epoch-002"]
    state = json.loads((run / "checkpoints" / "epoch-002" / "state.json").read_text())
    assert state["epoch"] == 2 and state["history"] == history
    assert "Done. Validation ELBO" in output and "exports/tiny/1" in output


def test_fit_logs_the_elbo_terms_and_images_to_tensorboard(finished_run):
    logs = finished_run[0] / "run" / "logs"
    scalars = {"loss", "elbo", "reconstruction_loss", "kl", "beta"}
    assert scalars <= event_tags(logs / "train")
    assert scalars | {"reconstructions", "samples", "mutual_information", "active_units"} <= \
        event_tags(logs / "validation")


def test_fit_exports_the_trained_model(finished_run):
    """The export answers as the run's final model does (not an earlier checkpoint or a fresh network)."""
    from keras_vae.runs import load_run

    root, _ = finished_run
    loaded = tf.saved_model.load(str(root / "exports" / "tiny" / "1"))
    x = (tiny_images(4) / 255).astype(np.float32)
    out = loaded.signatures["serving_default"](x=tf.constant(x))
    assert out["x_mean"].shape == (4, 28, 28, 1) and out["z_mean"].shape == (4, 3)
    _, model = load_run(str(root / "run"))
    np.testing.assert_allclose(out["x_mean"], model.reconstruct(x), atol=1e-5)
    np.testing.assert_allclose(out["z_mean"], model.encode(x)[0], atol=1e-5)


def test_config_file_with_flags_overriding(tmp_path):
    from keras_vae.cli import merge_config

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"latent-dim": 7, "epochs": 3, "dataset": "mnist"}))
    config = merge_config(str(path), {"epochs": 5, "beta": None})
    assert (config.latent_dim, config.epochs, config.dataset, config.beta) == (7, 5, "mnist", 1.0)


def test_registries_are_listed():
    assert {"mnist", "fashion_mnist", "sprites"} <= set(invoke("datasets").output.split())
    assert "vae" in invoke("models").output.split()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "cifar"], "Unknown dataset 'cifar'. Valid datasets: dsprites, fashion_mnist, fsdd, mnist, sprites, sprites28"),
        (["--model", "gan"], "Unknown model 'gan'. Valid models: "),
        (["--latent-dim", "0"], "--latent-dim must be a positive integer. Received: latent_dim=0"),
        (["--epochs", "0"], "--epochs must be a positive integer. Received: epochs=0"),
        (["--batch-size", "-4"], "--batch-size must be a positive integer. Received: batch_size=-4"),
        (["--beta", "-1"], "--beta must be a non-negative number. Received: beta=-1.0"),
        (["--architecture", "resnet"], "Unknown architecture 'resnet'"),
    ],
)
def test_bad_flags_get_a_message_and_status_2(args, message):
    result = invoke("fit", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_missing_data_files(tmp_path):
    result = invoke("fit", "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "Expected the four IDX files" in result.output and str(tmp_path) in result.output


def test_truncated_idx_and_corrupt_npz(tmp_path):
    from test_data import write_mnist_folder

    write_mnist_folder(tmp_path / "m")
    path = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    result = invoke("fit", "--dataset", "mnist", "--data-dir", str(tmp_path / "m"))
    assert result.exit_code == 2 and "train-images-idx3-ubyte.gz is truncated or corrupt" in result.output
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    result = invoke("fit", "--dataset", str(tmp_path / "bad.npz"))
    assert result.exit_code == 2 and "bad.npz is truncated or corrupt" in result.output


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"latent_dims": 3}', "unknown keys: latent_dims"),
        ('{"epochs": "ten"}', "--epochs must be a positive integer. Received: epochs='ten'"),
    ],
)
def test_malformed_config_files(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    result = invoke("fit", "--config", str(path))
    assert result.exit_code == 2 and message in result.output


def test_nan_in_the_data_is_refused(tmp_path):
    x = np.full((20, 8, 8, 1), 0.5, np.float32)
    x[3, 1, 1, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    result = invoke("fit", "--dataset", str(tmp_path / "nan.npz"))
    assert result.exit_code == 2 and "contains NaN" in result.output


def test_a_diverging_run_stops_exports_nothing_and_keeps_earlier_work(finished_run):
    root, _ = finished_run
    checkpoints = root / "run" / "checkpoints"
    before = {str(p): p.read_bytes() for p in checkpoints.glob("*/*")}
    result = keras_vae_process(
        "fit", "--dataset", str(root / "tiny.npz"), "--epochs", "2", "--batch-size", "32",
        "--latent-dim", "3", "--run-dir", str(root / "run"), "--export-dir", str(root / "exports"),
        "--export-name", "tiny", "--learning-rate", "1e30", "--force",
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Training diverged" in result.stderr and "Nothing was exported" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(root / "exports" / "tiny")) == ["1"]
    assert {str(p): p.read_bytes() for p in checkpoints.glob("*/*")} == before
    tf.saved_model.load(str(root / "exports" / "tiny" / "1"))


def test_a_finished_run_is_not_trained_again(finished_run):
    root, _ = finished_run
    args = ["fit", "--dataset", str(root / "tiny.npz"), "--epochs", "2", "--batch-size", "32", "--latent-dim", "3",
            "--run-dir", str(root / "run"), "--export-dir", str(root / "exports"), "--export-name", "tiny"]
    result = invoke(*args)
    assert result.exit_code == 0 and "is already complete (2 epochs)" in result.output
    assert sorted(os.listdir(root / "exports" / "tiny")) == ["1"]
    changed = [a if a != "3" else "4" for a in args]
    result = invoke(*changed)
    assert result.exit_code == 2
    assert "different configuration (latent_dim: 3 there, 4 now)" in result.output


def test_a_run_saved_before_a_setting_was_declared_resumes_with_that_settings_default(tmp_path):
    from keras_vae.config import FitConfig
    from keras_vae.errors import UserError
    from keras_vae.runs import check_same_run

    config = FitConfig(model="vq_vae2")
    older = {k: v for k, v in config.to_dict().items() if k != "residual_layers"}  # as if from before it existed
    check_same_run(tmp_path, config, older)
    with pytest.raises(UserError, match=r"different configuration \(residual_layers: 2 there, 3 now\)"):
        check_same_run(tmp_path, config.replace(residual_layers=3), older)


def test_off_a_terminal_fit_prints_one_line_per_epoch(finished_run):
    _, output = finished_run  # fit's stdout was a pipe, as in a log file or CI
    lines = output.splitlines()
    assert sum(line.startswith("Epoch ") for line in lines) == 2
    assert len(lines) <= 7 and "\r" not in output and "━" not in output, output


def test_fit_reports_where_its_time_went(finished_run):
    _, output = finished_run
    line = next(line for line in output.splitlines() if line.startswith("Seconds: "))
    phases = dict(part.rsplit(" ", 1) for part in line[len("Seconds: "):-1].split(", "))
    assert set(phases) == {"data", "build", "train steps", "validation", "summaries", "checkpoints", "other",
                           "save", "export"}
    assert all(float(v) >= 0 for v in phases.values()) and float(phases["train steps"]) > 0
