"""SavedModel exports, read the way TF Serving's C++ loader reads them."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from conftest import reply_json, tiny_images
from keras_vae.cli import cli
from keras_vae.errors import UserError
from keras_vae.export import export_saved_model, save_keras_model
from keras_vae.models.vae import VAE
from keras_vae.serving import SCORE_SAMPLES

SIGNATURES = {"serving_default", "reconstruct", "encode", "decode", "sample", "score"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = VAE((28, 28, 1), latent_dim=3, architecture="conv-small")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = (tiny_images(32) / 255).astype(np.float32)
    model.fit(x, batch_size=16, epochs=1, verbose=0)
    path = export_saved_model(model, str(root), "vae")
    return model, path, x[:5]


def signature_inputs(name, x, latent_dim):
    if name == "decode":
        return {"z": np.random.default_rng(0).normal(size=(4, latent_dim)).astype(np.float32)}
    if name == "sample":
        return {"num_samples": np.int32(6), "seed": np.int32(11)}
    return {"x": x}


def run_in_session(path, inputs_for):
    """Loads the `serve` tag in a TF1 session and runs each SignatureDef by tensor name, like TF Serving."""
    results = {}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        for name, signature in meta_graph.signature_def.items():
            if name == "__saved_model_init_op":  # the initializer entry, not a signature
                continue
            inputs = inputs_for(name)
            assert set(signature.inputs) == set(inputs), name
            feeds = {signature.inputs[k].name: v for k, v in inputs.items()}
            fetches = {k: t.name for k, t in signature.outputs.items()}
            results[name] = session.run(fetches, feeds)
    return results


def test_layout_is_tf_servings(exported):
    _, path, _ = exported
    assert path.endswith(os.path.join("vae", "1"))
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert os.path.isdir(os.path.join(path, "variables"))
    assert [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp")] == []


def test_every_signature_runs_by_tensor_name_in_a_tf1_session(exported):
    model, path, x = exported
    results = run_in_session(path, lambda name: signature_inputs(name, x, model.latent_dim))
    assert set(results) == SIGNATURES
    expected_x_mean = model.reconstruct(x).numpy()
    expected_mean, expected_stddev = (t.numpy() for t in model.encode(x))
    for name in ("serving_default", "reconstruct"):
        np.testing.assert_allclose(results[name]["x_mean"], expected_x_mean, atol=1e-5)
        np.testing.assert_allclose(results[name]["z_mean"], expected_mean, atol=1e-5)
    encode = results["encode"]
    np.testing.assert_allclose(encode["mean"], expected_mean, atol=1e-5)
    np.testing.assert_allclose(encode["stddev"], expected_stddev, atol=1e-5)
    assert encode["z"].shape == (5, 3) and not np.allclose(encode["z"], encode["mean"])
    z = signature_inputs("decode", x, 3)["z"]
    np.testing.assert_allclose(results["decode"]["x_mean"], model.decode(z).numpy(), atol=1e-5)
    sample = results["sample"]
    assert sample["x_mean"].shape == (6, 28, 28, 1) and sample["z"].shape == (6, 3)
    np.testing.assert_allclose(sample["x_mean"], model.sample(6, seed=11)[0].numpy(), atol=1e-5)
    score = results["score"]
    assert score["elbo"].shape == (5,)
    # The model scores the images it was trained on above the same images inverted (an untrained or
    # broken model scores both alike, near -784·log 2; this one-epoch model: about 10 nats apart).
    inverted = run_in_session(path, lambda name: {"x": 1 - x} if name == "score" else signature_inputs(name, x, 3))
    assert np.all(score["log_px_iw"] > inverted["score"]["log_px_iw"] + 3)


def test_tf_saved_model_load_matches_the_in_memory_model(exported):
    model, path, x = exported
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == SIGNATURES
    out = loaded.signatures["serving_default"](x=tf.constant(x))
    np.testing.assert_allclose(out["x_mean"], model.reconstruct(x), atol=1e-5)
    np.testing.assert_allclose(out["z_mean"], model.encode(x)[0], atol=1e-5)


def test_score_matches_the_models_own_estimate(exported):
    model, path, x = exported
    from keras_vae import losses
    from keras_vae.serving import _SCORE_SEED

    out = tf.saved_model.load(path).signatures["score"](x=tf.constant(x))
    log_weights, elbo = model.importance_log_weights(x, SCORE_SAMPLES, seed=_SCORE_SEED)
    np.testing.assert_allclose(out["elbo"], elbo, rtol=1e-5)
    np.testing.assert_allclose(out["log_px_iw"], losses.iwae_bound(log_weights), rtol=1e-5)
    # ... and agrees with the training ELBO up to sampling noise.
    terms = np.mean([model.compute_terms(x)["elbo"].numpy() for _ in range(20)], axis=0)
    np.testing.assert_allclose(out["elbo"], terms, rtol=0.02)


def test_sample_is_stateless_and_seeded_by_its_input(exported):
    _, path, _ = exported
    sample = tf.saved_model.load(path).signatures["sample"]
    a = sample(num_samples=tf.constant(4), seed=tf.constant(1))["z"].numpy()
    b = sample(num_samples=tf.constant(4), seed=tf.constant(1))["z"].numpy()
    c = sample(num_samples=tf.constant(4), seed=tf.constant(2))["z"].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert sample(num_samples=tf.constant(0), seed=tf.constant(1))["x_mean"].shape == (0, 28, 28, 1)


def test_the_export_runs_without_tensorflow_probability(exported):
    _, path, x = exported
    np.save(os.path.join(os.path.dirname(path), "x.npy"), x)
    script = f"""
import sys
sys.modules["tensorflow_probability"] = None  # any import of it now fails
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({path!r})
x = tf.constant(np.load({os.path.join(os.path.dirname(path), "x.npy")!r}))
for name, fn in loaded.signatures.items():
    if name == "decode":
        out = fn(z=tf.zeros([2, 3]))
    elif name == "sample":
        out = fn(num_samples=tf.constant(2), seed=tf.constant(0))
    else:
        out = fn(x=x)
    assert all(np.all(np.isfinite(v.numpy())) for v in out.values()), name
assert "tensorflow_probability" not in [m for m, v in sys.modules.items() if v is not None]
print("ok", len(loaded.signatures))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok 6" in result.stdout


@pytest.mark.parametrize(
    "signature, bad, expected",
    [
        ("reconstruct", {"x": np.zeros((2, 28, 27, 1), np.float32)}, "[batch, 28, 28, 1]"),
        ("encode", {"x": np.zeros((2, 28, 28), np.float32)}, "[batch, 28, 28, 1]"),
        ("decode", {"z": np.zeros((2, 5), np.float32)}, "[batch, 3]"),
    ],
)
def test_wrong_shapes_are_refused_naming_the_expected_shape(exported, signature, bad, expected):
    _, path, _ = exported
    function = tf.saved_model.load(path).signatures[signature]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError, TypeError)) as error:
        function(**{k: tf.constant(v) for k, v in bad.items()})
    assert expected in str(error.value) or str(list(bad.values())[0].shape[1:]) in str(error.value)
    # The graph itself checks too, whatever shape the caller's placeholder claimed.
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        info = meta_graph.signature_def[signature]
        with pytest.raises((tf.errors.InvalidArgumentError, ValueError)) as error:
            session.run(
                {k: t.name for k, t in info.outputs.items()},
                {info.inputs[k].name: v for k, v in bad.items()},
            )
    assert "shape" in str(error.value)


def test_versions_count_up_and_are_never_overwritten(exported, tmp_path):
    model, _, _ = exported
    first = export_saved_model(model, str(tmp_path), "m")
    second = export_saved_model(model, str(tmp_path), "m")
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    stamp = os.path.getmtime(os.path.join(first, "saved_model.pb"))
    with pytest.raises(UserError, match="Version 1 already exists"):
        export_saved_model(model, str(tmp_path), "m", version=1)
    assert os.path.getmtime(os.path.join(first, "saved_model.pb")) == stamp
    assert os.path.basename(export_saved_model(model, str(tmp_path), "m", version=7)) == "7"
    assert os.path.basename(export_saved_model(model, str(tmp_path), "m")) == "8"
    with pytest.raises(UserError, match="positive integer. Received: version=0"):
        export_saved_model(model, str(tmp_path), "m", version=0)


def test_a_failed_export_leaves_no_partial_version(exported, tmp_path, monkeypatch):
    model, _, _ = exported

    def broken_write(model, path, max_samples=None):
        os.makedirs(os.path.join(path, "variables"))
        raise KeyboardInterrupt  # as if the process were interrupted mid-write

    monkeypatch.setattr("keras_vae.export.write_archive", broken_write)
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(model, str(tmp_path), "m")
    assert os.listdir(tmp_path / "m") == []


@pytest.fixture(scope="module")
def run_dir(exported, tmp_path_factory):
    from keras_vae.config import FitConfig

    model, _, _ = exported
    folder = tmp_path_factory.mktemp("run")
    FitConfig(dataset="sprites28", latent_dim=3, architecture="conv-small").save(folder / "config.json")
    save_keras_model(model, str(folder / "model.keras"))
    return folder


def test_export_command(run_dir, tmp_path):
    runner = CliRunner()
    for version in ("1", "2"):
        result = runner.invoke(cli, ["export", str(run_dir), "--export-dir", str(tmp_path), "--name", "m"])
        assert result.exit_code == 0, result.output
        assert os.path.join(str(tmp_path), "m", version) in result.output
    result = runner.invoke(cli, ["export", str(run_dir), "--export-dir", str(tmp_path), "--name", "m", "--version", "2"])
    assert result.exit_code == 2 and "Version 2 already exists" in result.output


def test_export_bad_input(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(cli, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "holds no finished model" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(cli, ["export", str(run_dir), "--export-dir", str(blocker)])
    assert result.exit_code == 2 and "Cannot create the export folder" in result.output


def test_predict_command(exported, tmp_path):
    model, path, x = exported
    runner = CliRunner()
    result = runner.invoke(cli, ["predict", "--saved-model", path, "--signature", "sample", "--num-samples", "4", "--output", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(tmp_path / "s.png") as image:
        assert image.size == (4 * 30 + 2, 30 + 2)
    z = np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    result = runner.invoke(cli, ["predict", "--saved-model", path, "--signature", "decode", "--input", str(tmp_path / "z.npy"), "--output", str(tmp_path / "d.npz")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / "d.npz")["x_mean"], model.decode(z), atol=1e-5)
    Image.fromarray((x[0, ..., 0] * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    result = runner.invoke(cli, ["predict", "--saved-model", path, "--input", str(tmp_path / "digit.png")])
    assert result.exit_code == 0 and '"z_mean"' in result.output
    np.save(tmp_path / "bad.npy", np.zeros((2, 5), np.float32))
    result = runner.invoke(cli, ["predict", "--saved-model", path, "--signature", "decode", "--input", str(tmp_path / "bad.npy")])
    assert result.exit_code == 2 and "[batch, 3]" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["predict", "--saved-model", path, "--signature", "nope"])
    assert result.exit_code == 2 and "Unknown signature 'nope'" in result.output


def test_rest_client_round_trip_against_a_local_stand_in_server(exported, tmp_path):
    """scripts/serving_client.py against a loopback server speaking TF Serving's REST format."""
    import http.server
    import importlib.util
    import json
    import threading

    model, path, x = exported
    loaded = tf.saved_model.load(path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            assert self.path == "/v1/models/vae:predict"
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            function = loaded.signatures[request.get("signature_name", "serving_default")]
            _, specs = function.structured_input_signature
            inputs = {k: tf.constant(v, specs[k].dtype) for k, v in request["inputs"].items()}
            reply_json(self, {"outputs": {k: v.numpy().tolist() for k, v in function(**inputs).items()}})

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        spec = importlib.util.spec_from_file_location("serving_client", os.path.join(os.path.dirname(__file__), "..", "scripts", "serving_client.py"))
        client = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(client)
        url = f"http://127.0.0.1:{server.server_port}"
        outputs = client.predict_rest(url, "vae", "sample", {"num_samples": 3, "seed": 5})
        np.testing.assert_allclose(outputs["x_mean"], model.sample(3, seed=5)[0], atol=1e-5)
        client.write_png(str(tmp_path / "s.png"), outputs["x_mean"], columns=3)
        from PIL import Image

        with Image.open(tmp_path / "s.png") as image:
            assert image.size == (3 * 30 + 2, 30 + 2)
            grid = np.asarray(image)
        np.testing.assert_allclose(grid[2:30, 2:30] / 255, np.asarray(outputs["x_mean"][0])[..., 0], atol=1 / 255 + 1e-6)
        reply = client.predict_rest(url, "vae", "encode", {"x": x[:2].tolist()})
        np.testing.assert_allclose(reply["mean"], model.encode(x[:2])[0], atol=1e-5)
    finally:
        server.shutdown()


def test_grpc_client_round_trip_against_a_local_prediction_service(exported, tmp_path):
    """scripts/serving_client.py over gRPC, against PredictionService served on loopback."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tensorflow_serving.apis")
    from concurrent import futures

    import importlib.util

    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    model, path, x = exported
    loaded = tf.saved_model.load(path)

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 - the gRPC method name
            assert request.model_spec.name == "vae"
            function = loaded.signatures[request.model_spec.signature_name]
            outputs = function(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
            reply = predict_pb2.PredictResponse()
            for name, value in outputs.items():
                reply.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return reply

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        spec = importlib.util.spec_from_file_location("serving_client", os.path.join(os.path.dirname(__file__), "..", "scripts", "serving_client.py"))
        client = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(client)
        outputs = client.predict_grpc(f"127.0.0.1:{port}", "vae", "sample", {"num_samples": 2, "seed": 9})
        np.testing.assert_allclose(outputs["x_mean"], model.sample(2, seed=9)[0], atol=1e-5)
        outputs = client.predict_grpc(f"127.0.0.1:{port}", "vae", "reconstruct", {"x": x[:2].tolist()})
        np.testing.assert_allclose(outputs["z_mean"], model.encode(x[:2])[0], atol=1e-5)
    finally:
        server.stop(0)
