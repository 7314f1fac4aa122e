import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_FASHION = os.environ.get(
    "KERAS_VAE_TEST_FASHION_DIR", os.path.join(REPO, "..", "shared", "data", "fashion_mnist")
)


@pytest.fixture(scope="session")
def fashion_dir():
    if not os.path.exists(os.path.join(SHARED_FASHION, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"real Fashion-MNIST not found at {SHARED_FASHION}")
    return SHARED_FASHION


def tiny_images(num=96, size=28, seed=0):
    """Blobby uint8 images with some structure (bright squares at random places)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((num, size, size, 1), np.uint8)
    for i in range(num):
        r, c = rng.integers(0, size - 10, 2)
        x[i, r : r + 10, c : c + 10] = 255
    return x


@pytest.fixture
def tiny_npz(tmp_path):
    path = tmp_path / "tiny.npz"
    x = tiny_images()
    np.savez(path, x=x, y=(np.arange(len(x)) % 3).astype(np.int64))
    return str(path)


SMALL_NVAE = {"groups_per_scale": 1, "channels": 8, "latent_channels": 2}  # the registry-wide tests' nvae only
# (vq_vae2 declares `channels` too)


def config_for(model, **values):
    """A FitConfig of `model` with those of `values` that the model takes (the others are left out),
    so one set of settings can be applied across the model registry."""
    from keras_vae.config import RUN_HYPERPARAMETERS, FitConfig, model_class

    declared = set(RUN_HYPERPARAMETERS) | set(model_class(model).all_hyperparameters())
    return FitConfig(model=model, **{key: value for key, value in values.items() if key in declared})


def untrained_vae_run(run_dir, dataset):
    """Writes a finished-looking run of an untrained 2-d `vae` on `dataset` into `run_dir` (config.json and
    model.keras): what commands that refuse other models' runs are tried on. Returns `run_dir`."""
    from keras_vae.config import FitConfig
    from keras_vae.models import build_model

    os.makedirs(run_dir, exist_ok=True)
    config = FitConfig(model="vae", latent_dim=2, dataset=str(dataset))
    config.save(os.path.join(run_dir, "config.json"))
    build_model(config, (28, 28, 1)).save(os.path.join(run_dir, "model.keras"))
    return run_dir


def invoke(*args):
    """Runs `keras-vae ARGS` in this process (click's runner); arguments may be paths or numbers."""
    from click.testing import CliRunner

    from keras_vae.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def keras_vae_process(*args, cwd=None):
    """Runs the real console entry point in a fresh process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "keras_vae.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The one factory of trained tiny runs, shared by every test file.

    `tiny_run(name, *fit_flags, labels=False, process=False)` trains
    `keras-vae fit` once per session and name on 96 tiny images (tiny.npz,
    with 3 labels when `labels`), into `<root>/run`, exporting to
    `<root>/exports/<name>`; flags given override those defaults. With
    `process` it runs the real console entry point in a fresh process.
    Returns (root, what fit printed).
    """
    made = {}

    def make(name, *flags, labels=False, process=False):
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            x = tiny_images(96)
            np.savez(root / "tiny.npz", x=x, **({"y": np.arange(len(x)) % 3} if labels else {}))
            args = ("fit", "--dataset", root / "tiny.npz", "--epochs", 2, "--batch-size", 32, "--run-dir", root / "run",
                    "--export-dir", root / "exports", "--export-name", name, *flags)
            if process:
                result = keras_vae_process(*args)
                assert result.returncode == 0, result.stderr[-3000:]
                made[name] = root, result.stdout
            else:
                result = invoke(*args)
                assert result.exit_code == 0, result.output
                made[name] = root, result.output
        return made[name]

    return make


def reply_json(handler, value, status=200):
    """Answers an http.server request with a JSON body (for the loopback stand-ins of TF Serving)."""
    import json

    body = json.dumps(value).encode()
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
