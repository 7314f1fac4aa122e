"""The feature networks: a classifier trained once per dataset and cached, and InceptionV3's discovery."""

import os

import numpy as np
import pytest

from keras_vae import feature_net
from keras_vae import sample_quality as sq
from keras_vae.data.datasets import Dataset
from keras_vae.errors import UserError

SIZE, CLASSES = 28, 3


def shapes(num, seed):
    """uint8 [num, 28, 28, 1]: a bright square, a horizontal bar or a vertical bar (label 0, 1, 2) at a
    random place."""
    rng = np.random.default_rng(seed)
    x = np.zeros((num, SIZE, SIZE, 1), np.uint8)
    y = np.arange(num) % CLASSES
    for image, label in zip(x, y):
        height, width = ((8, 8), (4, 16), (16, 4))[label]
        r, c = rng.integers(0, SIZE - height), rng.integers(0, SIZE - width)
        image[r : r + height, c : c + width] = 255
    return x, y


class Log(list):
    def __call__(self, message):
        self.append(message)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained on 600 synthetic images (2 epochs), its data, cache folder and log."""
    (x_train, y_train), (x_test, y_test) = shapes(600, seed=0), shapes(300, seed=1)
    cache, log = str(tmp_path_factory.mktemp("cache")), Log()
    network = feature_net.classifier_network(x_train, y_train, x_test, y_test, "shapes", cache, epochs=2, log=log)
    return network, (x_train, y_train, x_test, y_test), cache, log


def test_classifier_learns_the_synthetic_classes_and_reports_its_accuracy(trained):
    network, (_, _, x_test, y_test), _, _ = trained
    assert network.accuracy >= 0.9
    assert network.accuracy == np.mean(network.probabilities(x_test).argmax(axis=1) == y_test)
    assert network.features(x_test[:7]).shape == (7, 128)
    assert network.probabilities(x_test[:7]).shape == (7, CLASSES)
    assert network.name == "lenet:shapes" and len(network.digest) == 12
    # uint8 0..255 and float [0, 1] are the same images to the network.
    np.testing.assert_allclose(network.features(x_test[:5]), network.features(x_test[:5] / 255.0), rtol=1e-5)


def test_second_call_loads_the_cache_and_changed_data_does_not(trained):
    network, data, cache, log = trained
    assert [message.split()[0] for message in log] == ["Training"]
    loaded = feature_net.classifier_network(*data, "shapes", cache, epochs=2, log=log)
    assert log[-1].startswith("Loaded")
    assert (loaded.digest, loaded.accuracy) == (network.digest, network.accuracy)
    np.testing.assert_array_equal(loaded.features(data[2][:50]), network.features(data[2][:50]))
    x_train = data[0].copy()
    x_train[0, 0, 0, 0] ^= 1
    before = set(os.listdir(os.path.join(cache, "feature_nets")))
    other = feature_net.classifier_network(x_train, *data[1:], "shapes", cache, epochs=1, log=log)
    assert log[-1].startswith("Training")
    assert len(set(os.listdir(os.path.join(cache, "feature_nets"))) - before) == 2  # a new .keras and .json
    assert other.digest != network.digest


def test_training_is_deterministic_across_cache_folders(trained, tmp_path):
    network, data, _, _ = trained
    again = feature_net.classifier_network(*data, "shapes", str(tmp_path), epochs=2, log=Log())
    assert again.digest == network.digest


def test_fid_in_classifier_features_tells_real_from_noise_and_from_one_class(trained):
    network, (x_train, _, x_test, y_test), _, _ = trained
    train, test = network.features(x_train), network.features(x_test)
    noise = network.features(np.random.default_rng(2).uniform(size=x_test.shape).astype(np.float32))
    one_class = network.features(x_test[y_test == 0])
    same = sq.fid(train, test)
    assert same < sq.fid(test, noise) / 10
    assert same < sq.fid(test, one_class) / 3


def unlabelled(name="blobs"):
    x, _ = shapes(30, seed=3)
    return Dataset(name, x_train=x)


def test_feature_network_without_labels_or_inception_weights_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert feature_net.inception_network() is None
    with pytest.raises(UserError, match="no class labels") as error:
        feature_net.feature_network_for(unlabelled(), cache_dir=str(tmp_path))
    assert str(tmp_path / "models" / feature_net.INCEPTION_WEIGHTS) in str(error.value)


def test_inception_weights_are_found_only_where_keras_keeps_them(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert feature_net.default_inception_path() == str(tmp_path / "models" / feature_net.INCEPTION_WEIGHTS)
    missing = str(tmp_path / "elsewhere.h5")
    with pytest.raises(UserError, match="Received: weights_path="):
        feature_net.inception_network(missing)


def test_inception_preprocessing_resizes_repeats_grey_and_scales_to_plus_minus_one():
    grey = np.zeros((2, 28, 28, 1), np.uint8)
    grey[0] = 255
    grey[1, :, 14:] = 255  # right half white
    x = feature_net.inception_preprocess(grey)
    assert x.shape == (2, 299, 299, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_array_equal(x[1, ..., 0], x[1, ..., 2])  # grey: the three channels agree
    assert x[1, :, 0].max() == -1.0 and x[1, :, -1].min() == 1.0
    assert -1 < x[1, 0, 149, 0] < 1  # the bilinear edge between the halves
    rgb = np.random.default_rng(0).uniform(size=(1, 299, 299, 3)).astype(np.float32)
    np.testing.assert_allclose(feature_net.inception_preprocess(rgb), rgb * 2 - 1, atol=1e-6)  # no resize needed
