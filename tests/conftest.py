import os

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
