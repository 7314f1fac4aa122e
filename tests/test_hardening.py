"""Every failure gets a clear message, no request can exhaust a server, no file is left inconsistent."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import REPO, SMALL_NVAE, config_for, invoke, reply_json, tiny_images
from keras_vae import callbacks, runs
from keras_vae.config import FitConfig
from keras_vae.data.datasets import load_dataset
from keras_vae.errors import TrainingDiverged, UserError
from keras_vae.export import export_saved_model
from keras_vae.models import build_model, model_names
from keras_vae.train import fit

SHAPE = (8, 8, 1)


def tiny_model(name="vae", shape=SHAPE, **extra):
    config = config_for(name, latent_dim=3, kl_warmup_steps=0, prior_components=2, codebook_size=8,
                        codebook_dim=2, **(SMALL_NVAE if name == "nvae" else {}), **extra)
    return build_model(config, shape, num_classes=3)


def quiet(*_):
    pass


# ------------------------------------------------------------------ serving
@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    return export_saved_model(tiny_model(), str(tmp_path_factory.mktemp("capped")), "m", max_samples=5)


def run_v1(path, signature, feeds):
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        info = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def[signature]
        return session.run({k: t.name for k, t in info.outputs.items()},
                           {info.inputs[k].name: v for k, v in feeds.items()})


def test_sample_and_score_are_capped_in_the_graph(capped):
    assert run_v1(capped, "sample", {"num_samples": 5, "seed": 1})["x_mean"].shape == (5, *SHAPE)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="`num_samples` must lie in 0..5: the cap this model was exported with"):
        run_v1(capped, "sample", {"num_samples": 2**31 - 1, "seed": 1})
    with pytest.raises(tf.errors.InvalidArgumentError, match="`score` takes at most 256 examples per request"):
        run_v1(capped, "score", {"x": np.zeros((257, *SHAPE), np.float32)})
    assert run_v1(capped, "score", {"x": np.zeros((256, *SHAPE), np.float32)})["elbo"].shape == (256,)
    with pytest.raises(UserError, match="--max-samples must be a positive integer. Received: max_samples=0"):
        export_saved_model(tiny_model(), os.path.dirname(os.path.dirname(capped)), "m", max_samples=0)


def test_the_graphs_own_shape_check_speaks_when_the_placeholder_would_not(capped):
    """TF Serving feeds tensors without Python's shape check: import the graph with an unshaped input."""
    from tensorflow.python.tools import saved_model_utils

    meta_graph = saved_model_utils.get_meta_graph_def(capped, "serve")
    info = meta_graph.signature_def["reconstruct"]
    with tf.Graph().as_default() as graph, tf.compat.v1.Session() as session:
        x = tf.compat.v1.placeholder(tf.float32, shape=None, name="unshaped")
        saver = tf.compat.v1.train.import_meta_graph(meta_graph, input_map={info.inputs["x"].name: x})
        saver.restore(session, os.path.join(capped, "variables", "variables"))
        output = graph.get_tensor_by_name(info.outputs["x_mean"].name)
        assert session.run(output, {x: np.zeros((2, *SHAPE), np.float32)}).shape == (2, *SHAPE)
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            session.run(output, {x: np.zeros((2, 8, 7, 1), np.float32)})
    assert "Input `x` must have shape [batch, 8, 8, 1] (float32)." in error.value.message
    assert "Received shape:" in error.value.message


def signature_feeds(info, batch=2):
    """Inputs for every input of a SignatureDef, by dtype and shape."""
    feeds = {}
    for name, tensor in info.inputs.items():
        dims = [d.size for d in tensor.tensor_shape.dim]
        if name in ("num_samples", "seed"):
            feeds[name] = 2
        elif name == "temperature":
            feeds[name] = np.float32(0.5)
        elif name == "y":
            feeds[name] = np.ones([batch] if dims else [], np.int32)
        elif tensor.dtype == tf.int32.as_datatype_enum:
            feeds[name] = np.ones([batch, *dims[1:]], np.int32)
        else:
            feeds[name] = np.full([batch, *dims[1:]], 0.5, np.float32)
    return feeds


def test_every_model_loads_and_answers_in_a_v1_session_without_tensorflow_probability(tmp_path):
    variants = [(name, {}) for name in model_names()] + [("vae", {"prior": "mog"}), ("vae", {"prior": "vamp"}),
                                                         ("vae", {"decoder": "pixelcnn", "decoder_layers": 2,
                                                                  "aggressive_encoder": True}),
                                                         ("vq_vae", {"condition": "label"})]
    paths = []
    for i, (name, extra) in enumerate(variants):
        model = tiny_model(name, **extra)
        paths.append(export_saved_model(model, str(tmp_path), f"{name}-{i}"))
    script = f"""
import sys
sys.modules["tensorflow_probability"] = None  # importing it now fails
import numpy as np
import tensorflow as tf
sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
from test_hardening import signature_feeds
for path in {paths!r}:
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        assert set(meta_graph.signature_def) >= {{"serving_default", "reconstruct", "encode", "decode", "sample",
                                                  "score"}}, path
        for name, info in meta_graph.signature_def.items():
            if name.startswith("__"):
                continue
            feeds = signature_feeds(info)
            out = session.run({{k: t.name for k, t in info.outputs.items()}},
                              {{info.inputs[k].name: v for k, v in feeds.items()}})
            for key, value in out.items():
                assert len(value) == 2 and np.all(np.isfinite(value)), (path, name, key)
print("ok", len({paths!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ok {len(variants)}" in result.stdout


def test_export_folders_are_readable_by_others_and_racing_exports_take_the_next_version(tmp_path, monkeypatch):
    model = tiny_model()
    old_umask = os.umask(0o022)
    try:
        first = export_saved_model(model, str(tmp_path), "m")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(first, "saved_model.pb")).st_mode) == 0o644
    # A racer that read "next version: 1" before the first export was renamed into place.
    monkeypatch.setattr("keras_vae.export.next_version", lambda base: 1)
    second = export_saved_model(model, str(tmp_path), "m")
    assert second.endswith(os.path.join("m", "2")) and os.path.exists(os.path.join(first, "saved_model.pb"))
    with pytest.raises(UserError, match="Version 1 already exists"):
        export_saved_model(model, str(tmp_path), "m", version=1)


@pytest.mark.parametrize("name", ["../x", "/abs", ".", "..", "a/b", ""])
def test_names_that_would_escape_the_export_folder_are_refused_before_training(name, tmp_path):
    result = invoke("fit", "--dataset", "sprites28", "--export-dir", tmp_path, "--export-name", name,
                    "--run-dir", tmp_path / "run")
    assert result.exit_code == 2 and ("must be a plain name of letters" in result.output or
                                      "--export-name must be a non-empty string" in result.output)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="plain name"):
        export_saved_model(tiny_model(), str(tmp_path), name)


class MetadataServer(BaseHTTPRequestHandler):
    """A loopback stand-in for TF Serving's REST API: metadata from the SavedModel, requests recorded."""

    metadata, requests = None, []

    def do_GET(self):  # noqa: N802 - http.server's naming
        reply_json(self, self.metadata)

    def do_POST(self):  # noqa: N802
        MetadataServer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        reply_json(self, {"outputs": {}})

    def log_message(self, *args):
        pass


def test_serve_example_derives_the_shapes_from_the_model(tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("the example script calls curl, which this machine lacks")
    from google.protobuf.json_format import MessageToDict
    from tensorflow.python.tools import saved_model_utils

    path = export_saved_model(tiny_model(shape=(12, 8, 3)), str(tmp_path), "m")
    signature_def = MessageToDict(saved_model_utils.get_meta_graph_def(path, "serve"), preserving_proto_field_name=True)
    MetadataServer.metadata = {"metadata": {"signature_def": {"signature_def": signature_def["signature_def"]}}}
    MetadataServer.requests = []
    server = HTTPServer(("127.0.0.1", 0), MetadataServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = subprocess.run(["bash", os.path.join(REPO, "scripts", "serve_example.sh"), "m"], capture_output=True,
                                text=True, timeout=60, env=dict(os.environ, SKIP_DOCKER="1", HOST="127.0.0.1",
                                                               REST_PORT=str(server.server_address[1])))
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    by_signature = {r.get("signature_name", "serving_default"): r for r in MetadataServer.requests}
    assert np.asarray(by_signature["decode"]["inputs"]["z"]).shape == (2, 3)
    assert np.asarray(by_signature["reconstruct"]["inputs"]["x"]).shape == (1, 12, 8, 3)
    assert np.asarray(by_signature["encode"]["instances"][0]["x"]).shape == (12, 8, 3)


# ---------------------------------------------------------- run directories
def test_checkpoints_sort_by_epoch_number_past_999(tmp_path):
    for epoch in (998, 999, 1000):
        os.makedirs(tmp_path / f"epoch-{epoch:03d}")
        (tmp_path / f"epoch-{epoch:03d}" / callbacks.STATE_FILE).write_text("{}")
    assert callbacks.latest_checkpoint(str(tmp_path)).endswith("epoch-1000")
    assert [os.path.basename(p) for p in callbacks.checkpoints(str(tmp_path))] == ["epoch-998", "epoch-999",
                                                                                 "epoch-1000"]


def test_failed_checkpoint_writes_leave_no_temporaries_and_stale_ones_are_removed(tmp_path, monkeypatch):
    os.makedirs(tmp_path / ".tmp-epoch-007-dead")
    model = tiny_model()
    checkpointer = callbacks.EpochCheckpoint(str(tmp_path), {}, keep=2)
    assert os.listdir(tmp_path) == []  # the dead run's temporary is gone
    checkpointer.set_model(model)
    monkeypatch.setattr(model, "save_weights", lambda path: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        checkpointer.on_epoch_end(0, {"loss": 1.0})
    assert os.listdir(tmp_path) == []


@pytest.fixture
def finished(tmp_path):
    np.savez(tmp_path / "tiny.npz", x=tiny_images(64))
    config = FitConfig(dataset=str(tmp_path / "tiny.npz"), epochs=2, batch_size=16, latent_dim=3,
                       run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "exports"), export_name="t")
    fit(config, verbose=0, log=quiet)
    return config


def test_a_diverging_forced_run_leaves_the_finished_runs_files_agreeing(finished):
    before = {name: open(os.path.join(finished.run_dir, name), "rb").read()
              for name in (runs.CONFIG_FILE, runs.MODEL_FILE, runs.HISTORY_FILE)}
    with pytest.raises(TrainingDiverged):
        fit(finished.replace(latent_dim=5, learning_rate=1e30), force=True, verbose=0, log=quiet)
    for name, content in before.items():
        assert open(os.path.join(finished.run_dir, name), "rb").read() == content, name
    config, model = runs.load_run(finished.run_dir)
    assert config.latent_dim == 3 and model.latent_dim == 3


def test_load_run_refuses_files_that_describe_different_models(finished):
    finished.replace(latent_dim=4).save(os.path.join(finished.run_dir, runs.CONFIG_FILE))
    with pytest.raises(UserError, match="describe different models \\(latent_dim differ\\)"):
        runs.load_run(finished.run_dir)


def test_a_finished_run_whose_export_was_interrupted_is_exported_on_the_next_fit(finished):
    assert runs.read_export_record(finished.run_dir).endswith(os.path.join("t", "1"))
    os.remove(os.path.join(finished.run_dir, runs.EXPORT_FILE))  # as if killed during the export
    messages = []
    result = fit(finished, verbose=0, log=messages.append)
    assert result["complete"] and result["export_path"].endswith(os.path.join("t", "2"))
    assert "had not completed" in messages[-1]
    assert runs.read_export_record(finished.run_dir) == result["export_path"]
    assert fit(finished, verbose=0, log=quiet)["export_path"] is None  # and only once


def test_a_resumed_run_continues_its_schedules(finished):
    # 64 images, 10% held out: 57 to train, 3 steps per epoch, 6 for 2 epochs: warm-up over 3 steps.
    result = fit(finished.replace(epochs=4), verbose=0, log=quiet)
    history = result["history"]
    assert len(history["beta"]) == 4 and history["beta"][2:] == [1.0, 1.0]
    assert result["epochs_trained"] == 2  # epochs 3 and 4: what a benchmark's throughput divides by
    _, model = runs.load_run(finished.run_dir)
    assert model.kl_warmup_steps == 3  # half the first run's 6 steps, not half of 12


def test_extending_a_cosine_run_is_refused(tmp_path):
    np.savez(tmp_path / "tiny.npz", x=tiny_images(64))
    config = FitConfig(dataset=str(tmp_path / "tiny.npz"), epochs=1, batch_size=16, latent_dim=2,
                       lr_schedule="cosine", run_dir=str(tmp_path / "run"), export=False)
    fit(config, verbose=0, log=quiet)
    with pytest.raises(UserError, match="cosine learning-rate schedule that reaches 0 at epoch 1"):
        fit(config.replace(epochs=3), verbose=0, log=quiet)


class PoisonLastStep(keras.callbacks.Callback):
    """Makes a weight NaN after the last batch of the first epoch, leaving that batch's loss finite."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 2:
            weight = self.model.decoder.weights[0]
            weight.assign(np.full(weight.shape, np.nan, np.float32))


def test_non_finite_weights_at_epoch_end_stop_the_run_before_any_checkpoint_or_export(tmp_path):
    np.savez(tmp_path / "tiny.npz", x=tiny_images(64))
    config = FitConfig(dataset=str(tmp_path / "tiny.npz"), epochs=2, batch_size=16, latent_dim=3,
                       run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "exports"))
    # Validation sees the NaN weights first here; the weight check below covers weights it does not use.
    with pytest.raises(TrainingDiverged, match="the validation loss became nan at epoch 1"):
        fit(config, verbose=0, log=quiet, extra_callbacks=[PoisonLastStep()])
    assert callbacks.checkpoints(str(tmp_path / "run" / "checkpoints")) == []
    assert not (tmp_path / "exports").exists() and not (tmp_path / "run" / runs.MODEL_FILE).exists()
    guard = callbacks.StopOnNaN()
    guard.set_model(tiny_model("vae", prior="mog"))
    guard.on_epoch_end(0, {"val_loss": 1.0})  # all finite: nothing happens
    guard.model.prior_loc.assign(np.full(guard.model.prior_loc.shape, np.inf, np.float32))
    with pytest.raises(TrainingDiverged, match="the weights \\S*prior_loc became non-finite at the end of epoch 1"):
        guard.on_epoch_end(0, {"val_loss": 1.0})


# -------------------------------------------------------- messages, exit 2
def test_environment_faults_get_a_message_and_status_2(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke("fit", "--dataset", "sprites28", "--epochs", 1, "--run-dir", blocker / "run")
    assert result.exit_code == 2 and "Cannot use" in result.output and "Not a directory" in result.output
    assert "Traceback" not in result.output

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "exports"))

    monkeypatch.setattr("keras_vae.train.dataset_of", full_disk)
    result = invoke("fit", "--run-dir", tmp_path / "run2")
    assert result.exit_code == 2 and "No space left on device" in result.output and "Free some space" in result.output
    monkeypatch.setattr("keras_vae.train.dataset_of", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    result = invoke("fit", "--run-dir", tmp_path / "run3")
    assert result.exit_code == 2 and "Out of memory" in result.output
    monkeypatch.setattr("keras_vae.train.dataset_of",
                        lambda *a, **k: (_ for _ in ()).throw(ValueError("bad value 7")))
    result = invoke("fit", "--run-dir", tmp_path / "run4")
    assert result.exit_code == 2 and "A value was refused: bad value 7" in result.output
    result = invoke("--debug", "fit", "--run-dir", tmp_path / "run5")  # the traceback, for the curious
    assert isinstance(result.exception, ValueError)


def test_bugs_still_show_their_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr("keras_vae.train.dataset_of", lambda *a, **k: (_ for _ in ()).throw(KeyError("bug")))
    result = invoke("fit", "--run-dir", tmp_path / "run")
    assert isinstance(result.exception, KeyError)


@pytest.mark.parametrize("values, message", [
    ({"export": "false"}, "--export must be true or false. Received: export='false'"),
    ({"learning_rate": "NaN"}, "--learning-rate must be a positive number"),
    ({"seed": -3}, "--seed must be an integer in [0, 2147483647]"),
    ({"beta": 1e400}, "--beta must be a non-negative number"),
    ({"latent_dim": 2.5}, "--latent-dim must be a positive integer"),
])
def test_config_values_are_checked_by_type_and_range_before_any_work(tmp_path, values, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values).replace('"NaN"', "NaN"))
    result = invoke("fit", "--config", path, "--run-dir", tmp_path / "run")
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "run").exists()


# -------------------------------------------------------------------- data
@pytest.mark.parametrize("arrays, message", [
    ({"y": np.arange(5)}, "y has 5 labels for 20 images"),
    ({"y": np.linspace(0, 1, 20)}, "y must hold integer class labels"),
    ({"y": -np.ones(20)}, "y holds negative labels"),
    ({"y": np.eye(4)[np.arange(20) % 4]}, "y looks one-hot ((20, 4)); give class indices instead"),
    ({"x_test": np.zeros((3, 6, 6), np.uint8)}, "x_test images are (6, 6, 1), x_train images (8, 8, 1)"),
    ({"y": np.zeros(20), "x_test": np.zeros((3, 8, 8), np.uint8)}, "labels for only one split (y)"),
    ({"x": np.full((20, 8, 8), np.inf, np.float32)}, "x_train contains NaN or infinite values"),
    ({"x": np.zeros((20, 8, 8), np.int64)}, "x_train is int64; images must be uint8"),
])
def test_npz_arrays_are_checked_against_each_other(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **{"x": np.zeros((20, 8, 8), np.uint8), **arrays})
    with pytest.raises(UserError) as error:
        load_dataset(str(tmp_path / "d.npz"))
    assert message in str(error.value)


def test_float_labels_with_integer_values_are_accepted(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0.0, 2.0, 1.0, 2.0]))
    dataset = load_dataset(str(tmp_path / "d.npz"))
    assert dataset.y_train.dtype == np.int32 and dataset.num_classes == 3


def test_image_folders_skip_hidden_and_foreign_files_and_convert_16_bit_and_palettes(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    os.makedirs(folder)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(folder / "wide.png")
    (folder / "._wide.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not an image
    (folder / "Thumbs.db").write_bytes(b"junk")
    grey = Image.fromarray(np.full((4, 4), 128, np.uint8)).convert("P")
    grey.save(folder / "palette.png")
    dataset = load_dataset(str(folder))
    assert dataset.x_train.shape == (2, 4, 4, 1) and dataset.x_train.dtype == np.uint8
    assert sorted(dataset.x_train.reshape(2, -1)[:, 0]) == [128, 255]  # 16-bit white is 8-bit white
    colour = folder / "colour"
    os.makedirs(colour)
    Image.fromarray(np.array([[[255, 0, 0]] * 4] * 4, np.uint8)).convert("P").save(colour / "red.png")
    from keras_vae.images import read_image

    assert read_image(str(colour / "red.png"))[0, 0].tolist() == [255, 0, 0]
    monkeypatch.setattr("keras_vae.images.MAX_PIXELS", 15)
    with pytest.raises(UserError, match="possible decompression bomb"):
        read_image(str(folder / "wide.png"))


@pytest.fixture(scope="module")
def vae_export(tmp_path_factory):
    return export_saved_model(tiny_model(shape=(4, 4, 1)), str(tmp_path_factory.mktemp("predict")), "m")


def test_predict_scales_uint8_alike_and_refuses_bad_inputs(vae_export, tmp_path):
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", pixels[None, :, :, None])
    from_png = json.loads(invoke("predict", "--saved-model", vae_export, "--input", tmp_path / "a.png").output)
    from_npy = json.loads(invoke("predict", "--saved-model", vae_export, "--input", tmp_path / "a.npy").output)
    np.testing.assert_allclose(from_png["x_mean"], from_npy["x_mean"], atol=1e-6)
    for name, array, message in [
        ("nan.npy", np.full((1, 4, 4, 1), np.nan, np.float32), "contains NaN or infinite values"),
        ("big.npy", np.full((1, 4, 4, 1), 3.0, np.float32), "has values in [3, 3]; images (input `x`) must be"),
    ]:
        np.save(tmp_path / name, array)
        result = invoke("predict", "--saved-model", vae_export, "--input", tmp_path / name)
        assert result.exit_code == 2 and message in result.output
    result = invoke("predict", "--saved-model", vae_export, "--signature", "sample", "--num-samples", 0,
                    "--output", tmp_path / "s.png")
    assert result.exit_code == 2 and "--num-samples must be a positive integer" in result.output


# --------------------------------------------------------------- quiet CLI
def test_listing_commands_do_not_import_tensorflow():
    script = ("import sys; from keras_vae.cli import main\n"
              "try:\n    main(['models'])\nexcept SystemExit:\n    pass\n"
              "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "False" and any(line.startswith("beta_tc_vae") for line in lines)


def test_a_command_prints_only_its_own_output():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "keras_vae.cli", "evaluate", "/no/such/run"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2
    assert result.stderr == "Error: Run directory /no/such/run does not exist.\n" and result.stdout == ""
