"""Loaders over the dataset registry, the IDX reader, the user's files and the pipeline."""

import gzip
import os

import numpy as np
import pytest

from conftest import REPO, tiny_images
from keras_vae.data import datasets, dsprites, idx, pipeline, sprites
from keras_vae.data.datasets import load_dataset
from keras_vae.errors import UserError


def write_mnist_folder(folder, num_train=12, num_test=5):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (num_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, num_train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (num_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, num_test),
    }
    for name, array in arrays.items():
        idx.write_idx(os.path.join(folder, name), array)
    return arrays


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.gz", "b"):
        idx.write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(idx.read_idx(tmp_path / name), array)


def test_truncated_and_corrupt_idx_files_are_named(tmp_path):
    good = tmp_path / "good"
    idx.write_idx(good, np.zeros((4, 5, 5), np.uint8))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(UserError, match=f"{truncated} is truncated or corrupt.*shape \\(4, 5, 5\\)"):
        idx.read_idx(truncated)
    not_idx = tmp_path / "junk"
    not_idx.write_bytes(b"hello world")
    with pytest.raises(UserError, match=f"{not_idx} is not an IDX file"):
        idx.read_idx(not_idx)
    cut_gzip = tmp_path / "cut.gz"
    cut_gzip.write_bytes(gzip.compress(good.read_bytes())[:20])
    with pytest.raises(UserError, match=f"{cut_gzip} is truncated or corrupt"):
        idx.read_idx(cut_gzip)


def test_mnist_from_a_data_dir_of_idx_files(tmp_path):
    arrays = write_mnist_folder(tmp_path / "m")
    data = load_dataset("mnist", data_dir=str(tmp_path / "m"))
    assert data.x_train.shape == (12, 28, 28, 1) and data.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(data.x_train[..., 0], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte.gz"])


def test_mnist_from_the_keras_npz_and_the_environment_variable(tmp_path, monkeypatch):
    x = np.zeros((3, 28, 28), np.uint8)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=[1, 2, 3], x_test=x[:2], y_test=[4, 5])
    monkeypatch.setenv("KERAS_VAE_DATA_DIR", str(tmp_path))
    data = load_dataset("mnist")
    assert data.x_train.shape == (3, 28, 28, 1) and list(data.y_test) == [4, 5]


def test_missing_files_say_what_was_expected_where_and_how_to_get_them(tmp_path):
    with pytest.raises(UserError) as error:
        load_dataset("fashion_mnist", data_dir=str(tmp_path))
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_a_partial_idx_folder_names_the_missing_files(tmp_path):
    write_mnist_folder(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_real_fashion_mnist(fashion_dir):
    data = load_dataset("fashion_mnist", data_dir=fashion_dir)
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert data.x_train.dtype == np.uint8 and data.x_train.max() == 255
    assert sorted(np.unique(data.y_train)) == list(range(10))
    assert np.bincount(data.y_test).tolist() == [1000] * 10


def test_sprites_are_deterministic_binary_and_carry_their_factors():
    a = datasets.load_sprites(seed=3, size=28, num_train=50, num_test=10)
    b = datasets.load_sprites(seed=3, size=28, num_train=50, num_test=10)
    c = datasets.load_sprites(seed=4, size=28, num_train=50, num_test=10)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert set(np.unique(a.x_train)) <= {0, 255} and a.x_train.shape == (50, 28, 28, 1)
    assert a.factors_train.shape == (50, 5) and a.factor_names == sprites.FACTOR_NAMES
    assert np.all(a.factors_train.max(axis=0) < sprites.FACTOR_SIZES)
    # Every image shows a shape, and a larger scale factor covers more pixels.
    areas = (a.x_train > 0).sum(axis=(1, 2, 3))
    assert areas.min() > 0
    small = sprites.render([[0, 0, 0, 16, 16]], 64)
    large = sprites.render([[0, 5, 0, 16, 16]], 64)
    assert (large > 0).sum() > 2 * (small > 0).sum()


def test_sprites_positions_follow_the_x_and_y_factors():
    left, right = sprites.render([[1, 3, 0, 0, 16], [1, 3, 0, 31, 16]], 64)
    column = lambda image: np.nonzero(image[..., 0])[1].mean()  # noqa: E731
    assert column(left) < 28 < 36 < column(right)


TINY_GRID = (3, 2, 4, 4, 4)  # 384 combinations: dSprites' factors, coarser


def fake_dsprites_npz(path, factor_sizes=TINY_GRID):
    """A file laid out like the original (colour first, row-major), with images that encode their own index."""
    grid = dsprites.rendered(8, factor_sizes)
    classes = grid.factors_of(np.arange(grid.num_images))
    images = np.zeros((grid.num_images, 64, 64), np.uint8)
    images[:, 0, :12] = np.unpackbits(np.arange(grid.num_images, dtype=">u2").view(np.uint8)).reshape(-1, 16)[:, 4:]
    np.savez(path, imgs=images, latents_classes=np.concatenate([np.zeros((len(classes), 1), np.int64), classes], 1))
    return images


def test_dsprites_is_the_whole_grid_split_into_disjoint_seeded_samples():
    data = datasets.load_dsprites(seed=1, factor_sizes=TINY_GRID)
    grid = data.ground_truth
    assert grid.num_images == 384 and data.x_train.shape[1:] == (64, 64, 1)
    train, test = grid.index_of(data.factors_train), grid.index_of(data.factors_test)
    assert len(train) + len(test) == 384 and not set(train) & set(test)  # every grid point, each in one split
    np.testing.assert_array_equal(data.x_test, sprites.render(data.factors_test, 64))
    np.testing.assert_array_equal(data.y_train, data.factors_train[:, 0])
    np.testing.assert_array_equal(grid.factors_of(grid.index_of(data.factors_train)), data.factors_train)
    again = datasets.load_dsprites(seed=1, factor_sizes=TINY_GRID)
    other = datasets.load_dsprites(seed=2, factor_sizes=TINY_GRID)
    np.testing.assert_array_equal(again.factors_test, data.factors_test)
    assert not np.array_equal(other.factors_test, data.factors_test)
    # Sampling with a factor held fixed, as the BetaVAE and FactorVAE scores do.
    factors = grid.sample_factors(500, np.random.default_rng(0))
    assert factors.shape == (500, 5) and (factors.max(0) == np.array(TINY_GRID) - 1).all() and factors.min() == 0
    factors[:, 2] = 3
    assert (grid.observations(factors[:4]) == sprites.render(factors[:4], 64)).all()
    with pytest.raises(ValueError, match="Received: array of shape"):
        grid.observations([[0, 0, 4, 0, 0]])  # orientation 4 lies outside this 4-value grid


def test_dsprites_reads_the_original_npz_from_the_data_dir(tmp_path):
    images = fake_dsprites_npz(tmp_path / dsprites.NPZ_NAME)
    data = datasets.load_dsprites(str(tmp_path), seed=0, factor_sizes=TINY_GRID)
    index = data.ground_truth.index_of(data.factors_test)
    np.testing.assert_array_equal(data.x_test[..., 0], images[index] * 255)  # each image found by its factors
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    with np.load(tmp_path / dsprites.NPZ_NAME) as f:
        np.savez(shuffled / dsprites.NPZ_NAME, imgs=f["imgs"], latents_classes=f["latents_classes"][::-1])
    with pytest.raises(UserError, match="row-major order"):
        datasets.load_dsprites(str(shuffled), factor_sizes=TINY_GRID)


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(UserError, match="Unknown dataset .cifar.*fashion_mnist, fsdd, mnist, sprites"):
        load_dataset("cifar")


def test_the_users_npz(tmp_path, tiny_npz):
    data = load_dataset(tiny_npz)
    assert data.x_train.shape == (96, 28, 28, 1) and data.num_classes == 3
    np.save(tmp_path / "x.npy", np.zeros(3))
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(UserError, match="has no x array; it holds images"):
        load_dataset(str(tmp_path / "nox.npz"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="bad.npz is truncated or corrupt"):
        load_dataset(str(tmp_path / "bad.npz"))


def test_nan_and_out_of_range_data_are_refused(tmp_path):
    x = np.full((4, 8, 8, 1), 0.5, np.float32)
    x[1, 2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    with pytest.raises(UserError, match="contains NaN"):
        load_dataset(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "range.npz", x=np.full((4, 8, 8), 3.0, np.float32))
    with pytest.raises(UserError, match=r"values in \[3, 3\].*must lie in \[0, 1\]"):
        load_dataset(str(tmp_path / "range.npz"))


def test_image_folders_with_labels_from_subfolders(tmp_path):
    from PIL import Image

    for label in ("cats", "dogs"):
        os.makedirs(tmp_path / "imgs" / label)
        for i in range(3):
            Image.fromarray(np.full((8, 12), 40 * i, np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    data = load_dataset(str(tmp_path / "imgs"))
    assert data.x_train.shape == (6, 8, 12, 1) and list(data.y_train) == [0, 0, 0, 1, 1, 1]
    (tmp_path / "imgs" / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="broken.png is truncated or corrupt"):
        load_dataset(str(tmp_path / "imgs"))


def test_image_folders_of_mixed_sizes_are_refused(tmp_path):
    from PIL import Image

    os.makedirs(tmp_path / "mixed")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(UserError, match="differ in size"):
        load_dataset(str(tmp_path / "mixed"))


def batches(dataset):
    return [b.numpy() for b in dataset]


def test_dynamic_binarization_is_seeded_binary_unbiased_and_fresh_each_epoch():
    x = np.full((512, 4, 4, 1), 77, np.uint8)  # intensity 77/255 = 0.302
    data = pipeline.make_pipeline(x, 128, dynamic_binarization=True, shuffle=True, seed=5)
    epoch1, epoch2 = np.concatenate(batches(data)), np.concatenate(batches(data))
    assert set(np.unique(epoch1)) == {0.0, 1.0}
    assert epoch1.mean() == pytest.approx(77 / 255, abs=0.01)
    assert not np.array_equal(epoch1, epoch2)
    again = pipeline.make_pipeline(x, 128, dynamic_binarization=True, shuffle=True, seed=5)
    np.testing.assert_array_equal(np.concatenate(batches(again)), epoch1)


def test_shuffling_visits_every_example_once_per_epoch_in_a_new_order():
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1) / 100
    data = pipeline.make_pipeline(x, 32, y=np.arange(100), shuffle=True, seed=1)
    orders = [np.concatenate([y.numpy() for _, y in data]) for _ in range(2)]
    assert sorted(orders[0]) == list(range(100)) and sorted(orders[1]) == list(range(100))
    assert list(orders[0]) != list(orders[1])
    first = next(iter(data))[0].numpy()
    assert first.shape == (32, 1, 1, 1) and first.dtype == np.float32


def test_the_pipeline_runs_without_tf_data_autotuning():
    # Releasing an iterator (at every epoch's end) waited for autotuning's background thread: 4-44 s per run.
    for options in (pipeline.make_pipeline(np.zeros((8, 2, 2, 1), np.uint8), 4, shuffle=True).options(),
                    pipeline.make_pipeline(np.zeros((8, 2, 2, 1), np.uint8), 4, y=np.arange(8)).options(),
                    pipeline.in_order(np.zeros((8, 2)), np.arange(8), 4).options()):
        assert options.autotune.enabled is False


def test_in_order_cuts_the_arrays_into_batches_in_their_order():
    x, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10) * 3
    cut = [(a.numpy(), b.numpy()) for a, b in pipeline.in_order(x, y, 4)]
    assert [len(b) for _, b in cut] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([a for a, _ in cut]), x)
    np.testing.assert_array_equal(np.concatenate([b for _, b in cut]), y)


def test_static_binarization_is_a_seeded_bernoulli_draw_of_each_intensity():
    grey = np.full((4000, 4, 4, 1), 77, np.uint8)  # one intensity: the draw's mean must be 77/255
    once = pipeline.binarize_once(grey, seed=2)
    assert once.dtype == np.uint8 and set(np.unique(once)) == {0, 255}
    assert abs(once.mean() / 255 - 77 / 255) < 0.005  # 64,000 draws: standard error 0.0018
    np.testing.assert_array_equal(once, pipeline.binarize_once(grey, seed=2))
    assert not np.array_equal(once, pipeline.binarize_once(grey, seed=3))
    ends = np.array([0, 255], np.uint8).reshape(2, 1, 1, 1)  # black stays black, white stays white
    np.testing.assert_array_equal(pipeline.binarize_once(ends, seed=0), ends)


def test_the_validation_split_holds_out_a_seeded_fraction_with_each_image_beside_its_label():
    x = tiny_images(40)
    y = np.arange(40)  # labels are row indices, so each pair can be checked
    x_tr, y_tr, x_val, y_val = pipeline.split_validation(x, y, 0.25, seed=0)
    assert len(x_val) == 10 and len(x_tr) == 30
    assert sorted(np.concatenate([y_tr, y_val])) == list(range(40))
    np.testing.assert_array_equal(x_tr, x[y_tr])
    np.testing.assert_array_equal(x_val, x[y_val])
    assert list(pipeline.split_validation(x, y, 0.25, seed=0)[3]) == list(y_val)
    assert list(pipeline.split_validation(x, y, 0.25, seed=1)[3]) != list(y_val)


def registered_dataset_dir(name, tmp_path):
    """Where each registered dataset's files are in this test run (None: generated in-process)."""
    if name == "mnist":
        write_mnist_folder(tmp_path / "mnist", num_train=40, num_test=7)
        return str(tmp_path / "mnist")
    if name == "fashion_mnist":
        from conftest import SHARED_FASHION

        if not os.path.exists(os.path.join(SHARED_FASHION, "train-images-idx3-ubyte.gz")):
            pytest.skip(f"real Fashion-MNIST not found at {SHARED_FASHION}")
        return SHARED_FASHION
    if name == "fsdd":
        folder = os.path.join(REPO, "..", "shared", "data", "fsdd")
        if not os.path.isdir(os.path.join(folder, "recordings")):
            pytest.skip(f"the Free Spoken Digit Dataset not found at {folder}")
        return folder
    return None


@pytest.mark.parametrize("name", datasets.DATASETS.names())
def test_every_registered_dataset_loads_and_evaluation_sees_what_validation_saw(name, tmp_path):
    from keras_vae.config import FitConfig
    from keras_vae.data.splits import load_split
    from keras_vae.train import prepare_data

    data_dir = registered_dataset_dir(name, tmp_path)
    dataset = load_dataset(name, data_dir)
    assert dataset.x_train.shape[1:] == dataset.image_shape
    if dataset.is_signal:  # recordings: real-valued clips with padding masks
        assert dataset.x_train.dtype == np.float32 and dataset.mask_train.shape == dataset.x_train.shape[:2]
    else:
        assert dataset.x_train.ndim == 4 and dataset.x_train.dtype == np.uint8 and dataset.x_train.max() > 0
    assert dataset.y_train is None or (len(dataset.y_train) == len(dataset.x_train)
                                       and 0 <= dataset.y_train.min() and dataset.y_train.max() < dataset.num_classes)
    config = FitConfig(dataset=name, data_dir=data_dir, batch_size=4,
                       binarize="none" if dataset.is_signal else "dynamic")
    _, val, _, num_train = prepare_data(config, dataset)
    batches = list(val)
    validation = np.concatenate([(b["x"] if isinstance(b, dict) else b).numpy() for b in batches])
    held_out = load_split(config, "test", dataset)
    # The one rule: evaluation measures exactly the images (and binarization) that validation measured.
    np.testing.assert_array_equal(held_out.x, validation)
    if dataset.is_signal:  # and the same padding
        np.testing.assert_array_equal(held_out.mask, np.concatenate([b["mask"].numpy() for b in batches]))
    else:
        assert set(np.unique(validation)) <= {0.0, 1.0}
    assert num_train == len(load_split(config, "train", dataset).x)
