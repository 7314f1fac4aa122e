"""The dataset registry: built-in datasets by name, and the user's own files by path.

`load_dataset(name_or_path, data_dir=None, seed=0, representation="logmel")`
returns a `Dataset` of numpy arrays (`dataset_of(config)` for a run's); `keras_vae.data.pipeline` turns those into tf.data pipelines.
"""

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np

from keras_vae.data import dsprites, idx, sprites
from keras_vae.errors import UserError
from keras_vae.registry import Registry

DATASETS = Registry("dataset")
DATA_DIR_ENV = "KERAS_VAE_DATA_DIR"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclasses.dataclass
class Dataset:
    """Images as uint8 [N, H, W, C] (0..255) or float32 in [0, 1], or 1-D signals as float32 [N, T, C]
    (any finite values), with optional labels.

    `x_test` is None when the source has no test split; the pipeline then
    holds out a slice of `x_train` for validation.
    """

    name: str
    x_train: np.ndarray
    x_test: Optional[np.ndarray] = None
    y_train: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None
    factors_train: Optional[np.ndarray] = None
    factors_test: Optional[np.ndarray] = None
    factor_names: Tuple[str, ...] = ()
    num_classes: int = 0
    ground_truth: Optional[dsprites.FactorImages] = None  # every factor combination and its image
    mask_train: Optional[np.ndarray] = None  # float32 [N, T]: 1 on a clip's real steps, 0 on its padding
    mask_test: Optional[np.ndarray] = None
    audio: Optional[object] = None  # the `keras_vae.audio.AudioFormat` of recordings, to listen to examples
    factor_values: dict = dataclasses.field(default_factory=dict)  # {factor: names of its values}, where named

    @property
    def image_shape(self):
        """The shape of one example: (H, W, C) for images, (T, C) for signals."""
        return tuple(self.x_train.shape[1:])

    @property
    def is_signal(self):
        return self.x_train.ndim == 3


def load_dataset(name, data_dir=None, seed=0, representation="logmel"):
    """Loads a registered dataset by name, or the user's `.npz` file, image folder or WAV folder by path;
    recordings become examples as `representation` says (`keras_vae.audio.REPRESENTATIONS`)."""
    if name in DATASETS:
        loader = DATASETS.get(name)
        options = {"representation": representation} if getattr(loader, "recordings", False) else {}
        dataset = loader(data_dir=data_dir, seed=seed, **options)
    elif _looks_like_path(name):
        dataset = load_path(name, representation, seed)
    else:
        raise UserError(
            f"Unknown dataset {name!r}. Valid datasets: {', '.join(DATASETS.names())}, "
            "or a path to a .npz file with an `x` array (images, or signals [N, T] / [N, T, C] with "
            "kind='signal'), a folder of PNG/JPEG images or a folder of WAV files."
        )
    return check_dataset(dataset)


def dataset_of(config):
    """The dataset a run's configuration names, as it trains on it."""
    return load_dataset(config.dataset, config.data_dir, config.seed, config.representation)


def _looks_like_path(name):
    return os.path.exists(name) or os.sep in name or name.endswith(".npz")


def check_dataset(dataset):
    """Rejects data a VAE cannot train on, naming the problem: images [N, H, W, C] as uint8 or float in
    [0, 1], or signals [N, T, C] as float of any finite value; one example shape in both splits."""
    if dataset.x_train.ndim not in (3, 4):
        raise UserError(f"Dataset {dataset.name!r}: x_train must be images [N, H, W, C] or signals [N, T, C]; "
                        f"received an array of shape {dataset.x_train.shape}.")
    signal = dataset.is_signal
    kind, layout = ("signals", "[N, T, C]") if signal else ("images", "[N, H, W, C]")
    for split in ("x_train", "x_test"):
        x = getattr(dataset, split)
        if x is None:
            continue
        if x.ndim != dataset.x_train.ndim:
            raise UserError(f"Dataset {dataset.name!r}: {split} must be {kind} {layout}; "
                            f"received an array of shape {x.shape}.")
        if len(x) == 0:
            raise UserError(f"Dataset {dataset.name!r}: {split} holds no {kind}.")
        if split == "x_test" and x.shape[1:] != dataset.x_train.shape[1:]:
            raise UserError(f"Dataset {dataset.name!r}: x_test {kind} are {x.shape[1:]}, x_train {kind} "
                            f"{dataset.x_train.shape[1:]}; both splits need one "
                            + ("length and channel count." if signal else "image shape."))
        if signal and not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"Dataset {dataset.name!r}: {split} is {x.dtype}; signals must be float.")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"Dataset {dataset.name!r}: {split} is {x.dtype}; images must be uint8 (0..255) or "
                            "float (0..1).")
        if x.dtype != np.uint8:
            if not np.isfinite(x).all():
                raise UserError(f"Dataset {dataset.name!r}: {split} contains NaN or infinite values.")
            low, high = float(x.min()), float(x.max())
            if not signal and (low < 0 or high > 1):
                raise UserError(
                    f"Dataset {dataset.name!r}: {split} has values in [{low:g}, {high:g}]; "
                    "float images must lie in [0, 1] (or be stored as uint8 0..255)."
                )
    return dataset


def with_channel_axis(x):
    """[N, H, W] -> [N, H, W, 1]; [N, H, W, C] unchanged."""
    return x[..., None] if x.ndim == 3 else x


# --------------------------------------------------------------- MNIST family
def _mnist_family(name, keras_name, system_dirs, how_to_get):
    """Loader for an MNIST-format dataset: IDX files or the Keras .npz, else the Keras download."""

    def load(data_dir=None, seed=0):
        explicit = data_dir or os.environ.get(DATA_DIR_ENV)
        dirs = [explicit] if explicit else list(system_dirs) + [_keras_cache(keras_name)]
        for folder in dirs:
            found = _read_mnist_folder(folder, keras_name)
            if found is not None:
                return _mnist_dataset(name, *found)
        if not explicit:
            try:
                import keras

                module = getattr(keras.datasets, keras_name)
                (x_train, y_train), (x_test, y_test) = module.load_data()
                return _mnist_dataset(name, x_train, y_train, x_test, y_test)
            except Exception as error:  # noqa: BLE001 - any failure means "not available offline"
                reason = f" The Keras download failed: {error}."
        else:
            reason = ""
        raise UserError(
            f"Dataset {name!r} was not found. Expected the four IDX files "
            f"({', '.join(f + '.gz' for f in IDX_FILES)}) or {keras_name}.npz "
            f"in {', '.join(str(d) for d in dirs)}.{reason} {how_to_get}"
        )

    return load


def _keras_cache(keras_name):
    base = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "datasets")
    return os.path.join(base, "fashion-mnist") if keras_name == "fashion_mnist" else base


def _read_mnist_folder(folder, keras_name):
    """(x_train, y_train, x_test, y_test) from a folder, or None if it has none of the files."""
    if not folder or not os.path.isdir(folder):
        return None
    paths = []
    for stem in IDX_FILES:
        candidates = [os.path.join(folder, stem + suffix) for suffix in (".gz", "")]
        paths.append(next((p for p in candidates if os.path.exists(p)), None))
    if all(paths):
        return tuple(idx.read_idx(p) for p in paths)
    npz = os.path.join(folder, keras_name + ".npz")
    if os.path.exists(npz):
        arrays = _read_npz(npz, ("x_train", "y_train", "x_test", "y_test"))
        return tuple(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    if any(paths):
        missing = [stem + ".gz" for stem, p in zip(IDX_FILES, paths) if p is None]
        raise UserError(f"{folder} holds only some of the IDX files: missing {', '.join(missing)}.")
    return None


def _mnist_dataset(name, x_train, y_train, x_test, y_test):
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise UserError(f"Dataset {name!r}: the image and label files hold different numbers of examples.")
    return Dataset(
        name=name,
        x_train=with_channel_axis(np.asarray(x_train, np.uint8)),
        x_test=with_channel_axis(np.asarray(x_test, np.uint8)),
        y_train=np.asarray(y_train, np.int32),
        y_test=np.asarray(y_test, np.int32),
        num_classes=10,
    )


DATASETS.register("mnist")(
    _mnist_family(
        "mnist",
        "mnist",
        system_dirs=(),
        how_to_get="Run once with network access (Keras caches it in ~/.keras/datasets), "
        "or put the files in a folder and pass --data-dir DIR (or set KERAS_VAE_DATA_DIR).",
    )
)
DATASETS.register("fashion_mnist")(
    _mnist_family(
        "fashion_mnist",
        "fashion_mnist",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        how_to_get="Install Debian's package (apt-get install dataset-fashion-mnist), run once "
        "with network access, or pass --data-dir DIR (or set KERAS_VAE_DATA_DIR).",
    )
)


# -------------------------------------------------------------------- sprites
@DATASETS.register("sprites")
def load_sprites(data_dir=None, seed=0, size=64, num_train=20000, num_test=2000):
    """dSprites-like shapes with ground-truth factors (64×64, 20,000 + 2,000 images)."""
    x_train, f_train, x_test, f_test = sprites.make_sprites(num_train, num_test, size, seed)
    return Dataset(
        name="sprites",
        x_train=x_train,
        x_test=x_test,
        y_train=f_train[:, 0],
        y_test=f_test[:, 0],
        factors_train=f_train,
        factors_test=f_test,
        factor_names=sprites.FACTOR_NAMES,
        num_classes=len(sprites.SHAPES),
        ground_truth=dsprites.rendered(size),
    )


@DATASETS.register("sprites28")
def load_sprites28(data_dir=None, seed=0):
    """The same shapes at 28×28, for fast experiments and tests."""
    dataset = load_sprites(seed=seed, size=28)
    dataset.name = "sprites28"
    return dataset


@DATASETS.register("dsprites")
def load_dsprites(data_dir=None, seed=0, factor_sizes=dsprites.FACTOR_SIZES, num_train=dsprites.NUM_TRAIN,
                  num_test=dsprites.NUM_TEST):
    """dSprites' full factor grid (the original npz in --data-dir, else rendered): a seeded sample to train on
    (100,000 of its 737,280 images) and 10,000 other grid points to test on; the metrics draw from all of it."""
    grid = dsprites.source(data_dir, 64, factor_sizes)
    x_train, f_train, x_test, f_test = dsprites.sample_splits(grid, seed, num_train, num_test)
    return Dataset(name="dsprites", x_train=x_train, x_test=x_test, y_train=f_train[:, 0], y_test=f_test[:, 0],
                   factors_train=f_train, factors_test=f_test, factor_names=sprites.FACTOR_NAMES,
                   num_classes=len(sprites.SHAPES), ground_truth=grid)


# ----------------------------------------------------------------- recordings
def recordings_dataset(name, recordings, representation):
    """A `Dataset` of `keras_vae.data.recordings.Recordings`: fixed-length examples with padding masks, the
    first label as `y` and every label as a factor (so `--condition speaker` and the probes find them)."""
    from keras_vae.audio import AudioFormat

    audio = AudioFormat.at_rate(representation, recordings.sample_rate)
    x, mask = audio.examples(recordings.waveforms)
    names = tuple(recordings.labels)
    factors = np.stack([recordings.labels[n] for n in names], axis=1).astype(np.int32) if names else None
    test = recordings.test
    pick = (lambda a, rows: None if a is None else a[rows])
    return Dataset(name=name, x_train=x[~test], x_test=x[test], mask_train=mask[~test], mask_test=mask[test],
                   y_train=pick(factors, ~test)[:, 0] if names else None,
                   y_test=pick(factors, test)[:, 0] if names else None,
                   factors_train=pick(factors, ~test), factors_test=pick(factors, test), factor_names=names,
                   num_classes=int(factors[:, 0].max()) + 1 if names else 0, audio=audio,
                   factor_values=dict(recordings.label_names))


def recordings_loader(function):
    """Marks a registered loader as one of recordings: `load_dataset` passes it the representation."""
    function.recordings = True
    return function


@DATASETS.register("fsdd")
@recordings_loader
def load_fsdd(data_dir=None, seed=0, representation="logmel"):
    """The Free Spoken Digit Dataset (3,000 recordings, 6 speakers, 8 kHz; --data-dir: its folder), labels
    digit (y) and speaker, the dataset's own test split (indices 0-4)."""
    from keras_vae.data import recordings

    folder = data_dir or os.environ.get(DATA_DIR_ENV)
    if not folder:
        raise UserError("Dataset 'fsdd' needs its folder: pass --data-dir DIR (the folder holding recordings/, "
                        "e.g. ../shared/data/fsdd) or set KERAS_VAE_DATA_DIR.")
    return recordings_dataset("fsdd", recordings.load_fsdd(folder), representation)


# ------------------------------------------------------------ the user's files
def load_path(path, representation="logmel", seed=0):
    """A `.npz` with an `x` array (optional `y`, `x_test`, `y_test`), a folder of images or a folder of WAV
    files (sub-folders are labels)."""
    if os.path.isdir(path):
        if _holds_wav(path):
            from keras_vae.data import recordings

            return recordings_dataset(os.path.basename(os.path.normpath(path)),
                                      recordings.load_wav_folder(path, seed=seed), representation)
        return _load_image_folder(path)
    if not os.path.exists(path):
        raise UserError(f"Dataset path {path} does not exist.")
    if path.endswith(".npz"):
        arrays = _read_npz(path, ("x",))
        kind = str(arrays["kind"]) if "kind" in arrays else None
        if kind not in (None, "image", "signal"):
            raise UserError(f"{path}: kind must be 'image' or 'signal'; it is {kind!r}.")
        # [N, T] arrays are signals; [N, H, W] grey images unless kind says "signal" ([N, T, C]).
        signal = kind == "signal" or arrays["x"].ndim == 2
        shape = (lambda a: a[..., None] if a.ndim == 2 else a) if signal else with_channel_axis
        x = shape(arrays["x"])
        x_test = shape(arrays["x_test"]) if "x_test" in arrays else None
        y = _labels(path, "y", arrays.get("y"), x)
        y_test = _labels(path, "y_test", arrays.get("y_test"), x_test) if x_test is not None else None
        if x_test is not None and (y is None) != (y_test is None):
            raise UserError(f"{path} has labels for only one split ({'y' if y is not None else 'y_test'}): give "
                            "both y and y_test, or neither.")
        return Dataset(
            name=os.path.splitext(os.path.basename(path))[0],
            x_train=x,
            x_test=x_test,
            y_train=y,
            y_test=y_test,
            num_classes=int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1 if y is not None else 0,
        )
    raise UserError(f"Dataset path {path} is neither a .npz file nor a folder of images.")


def _holds_wav(folder):
    return any(n.lower().endswith(".wav") for _, _, names in os.walk(folder) for n in names)


def _labels(path, name, y, x):
    """Class labels `y` checked against their images `x`: int32 [N], or a UserError naming the array."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1 and np.isin(y, (0, 1)).all() and (y.sum(1) == 1).all():
        raise UserError(f"{path}: {name} looks one-hot ({y.shape}); give class indices instead, e.g. "
                        f"{name}=np.argmax({name}, axis=1).")
    if y.ndim != 1:
        raise UserError(f"{path}: {name} must be one class label per image, shape [N]; it has shape {y.shape}.")
    if len(y) != len(x):
        raise UserError(f"{path}: {name} has {len(y)} labels for {len(x)} images.")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                   and np.isfinite(y).all() and (y == np.round(y)).all())):
        raise UserError(f"{path}: {name} must hold integer class labels; it holds {y.dtype} values.")
    if len(y) and y.min() < 0:
        raise UserError(f"{path}: {name} holds negative labels (down to {y.min()}); labels are 0, 1, 2, ...")
    return y.astype(np.int32)


def _read_npz(path, required):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except Exception as error:  # noqa: BLE001 - zipfile, pickle and value errors alike
        raise UserError(f"{path} is truncated or corrupt and cannot be read as .npz ({error}).") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise UserError(
            f"{path} has no {', '.join(missing)} array; it holds {', '.join(arrays) or 'nothing'}."
        )
    return arrays


def _load_image_folder(folder):
    """Images in `folder` (labels from sub-folder names when the images are in sub-folders).

    Hidden files and folders (".DS_Store", "._a.png") and files that are not PNG or JPEG
    ("Thumbs.db") are skipped.
    """
    from keras_vae.images import read_image

    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    files, labels = [], []
    for root, folders, names in sorted(os.walk(folder)):
        folders[:] = [d for d in folders if not d.startswith(".")]
        for fname in sorted(names):
            if fname.lower().endswith(IMAGE_SUFFIXES) and not fname.startswith("."):
                files.append(os.path.join(root, fname))
                rel = os.path.relpath(root, folder).split(os.sep)[0]
                labels.append(classes.index(rel) if rel in classes else -1)
    if not files:
        raise UserError(f"{folder} holds no PNG or JPEG images.")
    images = []
    for path in files:
        array = read_image(path)
        if images and array.shape != images[0].shape:
            raise UserError(
                f"Images in {folder} differ in size or channels: {files[0]} is {images[0].shape}, "
                f"{path} is {array.shape}. Resize them to one size first."
            )
        images.append(array)
    labelled = classes and all(label >= 0 for label in labels)
    return Dataset(
        name=os.path.basename(os.path.normpath(folder)),
        x_train=np.stack(images),
        y_train=np.asarray(labels, np.int32) if labelled else None,
        num_classes=len(classes) if labelled else 0,
    )
