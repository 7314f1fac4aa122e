"""The feature networks that FID-style numbers (`keras_vae.sample_quality`) are computed in.

FID, KID and precision/recall are distances in some network's features, and
their values mean nothing without naming the network. Two are offered:

- InceptionV3's 2048-D pool features and 1000-way softmax, the networks of
  the published FID and Inception Score numbers, when the Keras weights file
  is already on disk (it is never downloaded);
- otherwise a small LeNet-like classifier trained on the dataset's labelled
  training split, once, and cached under a key of the data it learned from.
  Its numbers compare models on one dataset; they are not comparable to
  published Inception numbers, and are reported with the network's name,
  weights digest and test accuracy so that a reader can tell.

References:
    LeCun et al. (1998). Gradient-Based Learning Applied to Document Recognition
        (the LeNet layout: two conv-pool stages, then dense layers).
    Szegedy et al. (2016). Rethinking the Inception Architecture for Computer Vision.
    Heusel et al. (2017), sec. 4: FID in InceptionV3's pool3 features of images
        resized to 299x299.
"""

import dataclasses
import hashlib
import json
import os
import re
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from keras_vae import files
from keras_vae.data.pipeline import in_order, split_validation, to_unit_float
from keras_vae.errors import UserError

ARCHITECTURE_VERSION = 1  # part of the cache key: bump it when the classifier or its training changes
# Three epochs take a LeNet to ~99% on MNIST and ~90% on Fashion-MNIST, enough for its features to tell
# classes apart, in about a minute on a CPU; more epochs buy accuracy the distances barely notice.
EPOCHS = 3
BATCH_SIZE = 128
SEED = 0
HELD_OUT_FRACTION = 0.1  # measures the classifier's accuracy when the dataset has no labelled test split
INCEPTION_WEIGHTS = "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
INCEPTION_SIZE = 299


@dataclasses.dataclass
class FeatureNetwork:
    """A network that maps images to features [N, D] and class probabilities [N, classes].

    Attributes:
        name: what the network is, e.g. "inception_v3 pool3" or "lenet:fashion_mnist".
        digest: the first 12 hex digits of the sha256 of its weight values.
        accuracy: its test accuracy on the dataset it was trained on (None for InceptionV3).
        model: a Keras model from preprocessed images to [features, probabilities].
        preprocess: images uint8 0..255 or float [0, 1] -> the model's input.
        batch_size: images per forward pass.
    """

    name: str
    digest: str
    accuracy: Optional[float]
    model: keras.Model
    preprocess: Callable = to_unit_float
    batch_size: int = 500

    def features(self, x):
        """Features [N, D], float64, of images [N, H, W, C]."""
        return self._output(x, 0)

    def probabilities(self, x):
        """Class probabilities [N, classes], float64, of images [N, H, W, C]."""
        return self._output(x, 1)

    def description(self):
        return {"name": self.name, "digest": self.digest, "accuracy": self.accuracy}

    def _output(self, x, index):
        if np.ndim(x) != 4 or len(x) == 0:
            raise ValueError(f"{self.name} reads images [N, H, W, C] with N >= 1. Received: shape={np.shape(x)}")
        return np.concatenate([np.asarray(self.model(self.preprocess(x[start : start + self.batch_size]),
                                                     training=False)[index], np.float64)
                               for start in range(0, len(x), self.batch_size)])


def weights_digest(model):
    """The first 12 hex digits of the sha256 of a model's weight values (not of a file, whose bytes
    include the date it was saved)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:12]


# ------------------------------------------------------------- the classifier
def build_classifier(image_shape, num_classes, seed=SEED):
    """conv 5x5 32 - pool - conv 5x5 64 - pool - dense 128 ("features") - dense softmax ("probabilities")."""
    initializer = (lambda offset: keras.initializers.GlorotUniform(seed=seed + offset))
    inputs = keras.Input(image_shape)
    h = inputs
    for offset, filters in enumerate((32, 64)):
        h = keras.layers.Conv2D(filters, 5, padding="same", activation="relu",
                                kernel_initializer=initializer(offset))(h)
        h = keras.layers.MaxPooling2D()(h)  # (B, H, W, F) -> (B, H/2, W/2, F)
    features = keras.layers.Dense(128, activation="relu", kernel_initializer=initializer(2),
                                  name="features")(keras.layers.Flatten()(h))
    probabilities = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=initializer(3),
                                       name="probabilities")(features)
    return keras.Model(inputs, probabilities, name="lenet")


def train_classifier(x, y, num_classes, epochs=EPOCHS, seed=SEED):
    """Adam on cross-entropy, batches of BATCH_SIZE, in an order drawn from `seed` (no global seed is set)."""
    classifier = build_classifier(x.shape[1:], num_classes, seed)
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))  # fit's own shuffle would draw from TensorFlow's global seed
        classifier.fit(in_order(x[order], y[order], BATCH_SIZE), epochs=1, shuffle=False, verbose=0)
    return classifier


def _classifier_network(name, classifier, accuracy=None):
    model = keras.Model(classifier.input, [classifier.get_layer("features").output, classifier.output])
    return FeatureNetwork(name, weights_digest(classifier), accuracy, model)


def data_key(arrays, epochs):
    """A hash of the training recipe and the bytes of the data: a changed dataset never reuses a stale net."""
    digest = hashlib.sha256(f"lenet-v{ARCHITECTURE_VERSION}-epochs{epochs}-seed{SEED}".encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def classifier_network(x_train, y_train, x_test, y_test, dataset_name, cache_dir=None, epochs=EPOCHS, log=print):
    """The LeNet feature network of a labelled dataset: loaded from the cache, or trained and cached.

    Args:
        x_train, x_test: images [N, H, W, C], uint8 0..255 or float [0, 1].
        y_train, y_test: integer labels [N].
        dataset_name: names the network ("lenet:<name>") and its cache file.
        cache_dir: the cache folder (default `keras_vae.files.cache_dir()`); the network is stored as
            feature_nets/<name>-<key>.keras with its test accuracy in a .json beside it.
    """
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if np.ndim(x) != 4 or y is None or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"The {split} split needs images [N, H, W, C] and N labels. Received: "
                             f"x_{split}.shape={np.shape(x)}, y_{split}.shape={np.shape(y)}")
    y_train, y_test = np.asarray(y_train, np.int64).reshape(-1), np.asarray(y_test, np.int64).reshape(-1)
    name = f"lenet:{dataset_name}"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(dataset_name))
    folder = os.path.join(cache_dir or files.cache_dir(), "feature_nets")
    path = os.path.join(folder, f"{stem}-{data_key((x_train, y_train, x_test, y_test), epochs)}.keras")
    record_path = path[: -len(".keras")] + ".json"
    if os.path.exists(record_path) and os.path.exists(path):
        log(f"Loaded the {name} feature network from {path}.")
        with open(record_path) as f:
            record = json.load(f)
        return _classifier_network(name, keras.saving.load_model(path, compile=False), record["accuracy"])
    log(f"Training the {name} feature network ({epochs} epochs; once, cached in {path}) ...")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    classifier = train_classifier(to_unit_float(x_train), y_train, num_classes, epochs)
    network = _classifier_network(name, classifier)
    network.accuracy = float(np.mean(network.probabilities(x_test).argmax(axis=1) == y_test))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}.keras"  # a reader never sees half a file
    classifier.save(temporary)
    os.replace(temporary, path)
    files.write_json(record_path, {"name": name, "accuracy": network.accuracy, "digest": network.digest,
                                   "epochs": epochs})  # written last: its presence marks a complete entry
    return network


# ---------------------------------------------------------------- InceptionV3
def default_inception_path():
    """Where Keras keeps the InceptionV3 weights: $KERAS_HOME/models, else ~/.keras/models."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(keras_home, "models", INCEPTION_WEIGHTS)


def inception_preprocess(images):
    """Images [N, H, W, 1 or 3] (uint8 or [0, 1]) -> float32 [N, 299, 299, 3] in [-1, 1], as InceptionV3 reads
    them: bilinear resizing (as the reference TensorFlow FID code does), grey repeated to RGB."""
    images = to_unit_float(np.asarray(images))
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"InceptionV3 reads grey or RGB images [N, H, W, 1 or 3]. Received: shape={images.shape}")
    x = tf.image.resize(images, (INCEPTION_SIZE, INCEPTION_SIZE), method="bilinear")  # (N, H, W, C) -> (N, 299, 299, C)
    if x.shape[-1] == 1:
        x = tf.repeat(x, 3, axis=-1)  # (N, 299, 299, 1) -> (N, 299, 299, 3)
    return (x * 2 - 1).numpy()


def inception_network(weights_path=None):
    """InceptionV3's pool features (2048-D) and 1000-way softmax, or None when its weights are not on disk.

    Args:
        weights_path: the full-top Keras weights file; default `default_inception_path()`. An explicit
            path that does not exist is a UserError; a missing default file only means None.
    """
    path = weights_path or default_inception_path()
    if not os.path.isfile(path):
        if weights_path:
            raise UserError(f"No InceptionV3 weights file at {weights_path}. Received: weights_path={weights_path!r}")
        return None
    base = keras.applications.InceptionV3(include_top=True, weights=path)
    model = keras.Model(base.input, [base.get_layer("avg_pool").output, base.output])
    # 100 images of 299x299x3 per pass keeps the first layers' activations near 1 GB.
    return FeatureNetwork("inception_v3 pool3", weights_digest(base), None, model, inception_preprocess, 100)


def feature_network_for(dataset, cache_dir=None, prefer_inception=True, log=print):
    """The network a dataset's sample metrics are computed in: InceptionV3 when its weights are on disk
    (and `prefer_inception`), else the dataset's cached LeNet classifier (`classifier_network`).

    Raises:
        UserError: neither is available (no Inception weights and no class labels).
    """
    if prefer_inception:
        network = inception_network()
        if network is not None:
            return network
    if dataset.y_train is None or dataset.num_classes < 2:
        raise UserError(
            f"Sample metrics (FID, KID, precision/recall, Inception Score) are distances in a feature "
            f"network's features, and dataset {dataset.name!r} provides none: it has no class labels to train "
            f"a classifier on, and the InceptionV3 weights are not at {default_inception_path()}. Place the "
            f"Keras file {INCEPTION_WEIGHTS} there (it is never downloaded), or use a dataset with labels."
        )
    if dataset.x_test is not None and dataset.y_test is not None:
        x_train, y_train, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    else:
        x_train, y_train, x_test, y_test = split_validation(dataset.x_train, dataset.y_train, HELD_OUT_FRACTION, SEED)
    return classifier_network(x_train, y_train, x_test, y_test, dataset.name, cache_dir, log=log)
