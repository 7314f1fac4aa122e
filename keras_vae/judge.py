"""The sample judge: a classifier of `sprites`' ground-truth factors that scores generated images.

A likelihood bound can be good while the samples are soft blobs. The judge
looks at pictures the way a person would: it is a small convolutional network
trained on real `sprites` images to name the shape (square, ellipse, heart),
the scale (6 values) and the x and y position (32 values each), and to answer
"not a sprite" for images that are not a clean shape (empty or faint
images, heavy blurs, and amorphous crisp blobs). It then scores

- samples: the fraction it classifies confidently as one of the three shapes
  (probability at least `CONFIDENT`), and how the confident ones divide among
  the shapes (an even model gives 1/3 each);
- reconstructions: how often the factors read off a reconstruction match the
  original's ground truth (shape exactly, scale within one step, position
  within `POSITION_TOLERANCE` steps of about one pixel each).

Real images are lightly blurred and dimmed in training so that a decoder's
soft (Bernoulli-mean) edges are not held against it; only shapes that a
person would no longer name are rejected. The judge is trained once,
deterministically, and cached under the user's cache directory
(`keras_vae.files.cache_dir`: `KERAS_VAE_CACHE`, default `~/.cache/keras_vae`), keyed by its recipe.

    >>> judge = load_judge()
    >>> sample_scores(judge, model.sample(1000, seed=0))
"""

import hashlib
import json
import os

import numpy as np

from keras_vae.data import sprites
from keras_vae.files import cache_dir

SHAPE_CLASSES = sprites.SHAPES + ("not a sprite",)
REJECT = len(sprites.SHAPES)
HEADS = (("shape", len(SHAPE_CLASSES)), ("scale", 6), ("x", 32), ("y", 32))
CONFIDENT = 0.9
POSITION_TOLERANCE = 2
# The recipe: changing any of these retrains the judge (they are its cache key). Bump `version` when the
# code that makes the training images or the network changes.
RECIPE = dict(version=4, num_train=15000, num_reject=6000, epochs=8, batch_size=128, seed=0,
              light_blur=1.2, heavy_blur=(2.5, 5.0), dim=(0.6, 1.0))


# ----------------------------------------------------------------- pure scores
def shape_decisions(shape_probs, threshold=CONFIDENT):
    """Per image, the shape index (0..2) when the judge is confident of a shape, else -1."""
    shape_probs = np.asarray(shape_probs)
    best = shape_probs.argmax(axis=1)
    confident = (best != REJECT) & (shape_probs.max(axis=1) >= threshold)
    return np.where(confident, best, -1)


def score_decisions(decisions):
    """{confident, square, ellipse, heart}: the confident fraction and each shape's share of the
    confident images (None when none is confident)."""
    decisions = np.asarray(decisions)
    confident = decisions >= 0
    scores = {"confident": float(confident.mean())}
    for index, name in enumerate(sprites.SHAPES):
        scores[name] = float((decisions[confident] == index).mean()) if confident.any() else None
    return scores


def factor_agreement(predicted, factors):
    """{shape, scale, position}: the fraction of images whose predicted factors match `factors`
    ([N, 5] in sprites' order): shape exactly, scale within 1, x and y within POSITION_TOLERANCE."""
    truth = {name: np.asarray(factors)[:, sprites.FACTOR_NAMES.index(name)] for name, _ in HEADS}
    near = {name: np.abs(predicted[name] - truth[name]) for name in ("scale", "x", "y")}
    return {
        "shape": float(np.mean(predicted["shape"] == truth["shape"])),
        "scale": float(np.mean(near["scale"] <= 1)),
        "position": float(np.mean((near["x"] <= POSITION_TOLERANCE) & (near["y"] <= POSITION_TOLERANCE))),
    }


# ------------------------------------------------------------- training data
def gaussian_blur(images, sigmas):
    """Blurs float images [N, H, W, 1] with a per-image Gaussian of std `sigmas` [N] pixels."""
    images = np.asarray(images, np.float32)
    radius = int(np.ceil(3 * max(float(np.max(sigmas)), 1e-3)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    out = np.empty_like(images)
    for i, sigma in enumerate(np.asarray(sigmas, np.float32)):
        kernel = np.exp(-0.5 * (offsets / max(sigma, 1e-3)) ** 2)
        kernel /= kernel.sum()
        image = images[i, ..., 0]
        padded = np.pad(image, radius, mode="constant")
        rows = sum(w * padded[:, radius + o: radius + o + image.shape[1]] for o, w in zip(offsets.astype(int), kernel))
        out[i, ..., 0] = sum(w * rows[radius + o: radius + o + image.shape[0]] for o, w in zip(offsets.astype(int), kernel))
    return out


def random_blobs(num, rng, size=64):
    """Crisp amorphous blobs: a star-shaped outline r(θ) = r0·(1 + Σ_k a_k cos(kθ + φ_k)) over
    harmonics k = 2..5 with random amplitudes, at a random place, size and stretch. They are what an
    ill-fitted decoder draws: lumps, wedges and smears that no person would name as a shape."""
    coords = np.arange(size) + 0.5
    grid_y, grid_x = np.meshgrid(coords, coords, indexing="ij")
    images = np.zeros((num, size, size, 1), np.float32)
    for i in range(num):
        cy, cx = rng.uniform(16, size - 16, 2)
        r0, stretch, turn = rng.uniform(4, 13), rng.uniform(1.0, 2.0), rng.uniform(0, np.pi)
        dy, dx = grid_y - cy, grid_x - cx
        u = (np.cos(turn) * dx + np.sin(turn) * dy) / stretch
        v = -np.sin(turn) * dx + np.cos(turn) * dy
        theta = np.arctan2(v, u)
        amplitudes, phases = rng.uniform(0.06, 0.22, (4, 1, 1)), rng.uniform(0, 2 * np.pi, (4, 1, 1))
        bumps = amplitudes * np.cos(np.arange(2, 6)[:, None, None] * theta + phases)
        images[i, ..., 0] = np.hypot(u, v) <= r0 * (1 + bumps.sum(axis=0))
    return images


def reject_images(num, rng, recipe=RECIPE):
    """Images that are not a clean sprite, a third of each kind: near-empty (faint) ones, heavy blurs
    (soft blobs) and amorphous crisp blobs."""
    shapes = sprites.render(sprites.sample_factors(num, int(rng.integers(2**31)))).astype(np.float32) / 255
    low, high = recipe["heavy_blur"]
    faint = shapes * rng.uniform(0.0, 0.25, (num, 1, 1, 1))
    blurred = gaussian_blur(shapes, rng.uniform(low, high, num))
    kind = rng.integers(0, 3, num)[:, None, None, None]
    return np.where(kind == 0, faint, np.where(kind == 1, blurred, random_blobs(num, rng))).astype(np.float32)


def training_set(recipe=RECIPE):
    """(images [N, 64, 64, 1] float, labels {head: [N]}) for the judge: real sprites, lightly
    blurred and dimmed, then the rejects (their other heads are masked with -1)."""
    rng = np.random.default_rng(recipe["seed"])
    x_real, factors, _, _ = sprites.make_sprites(recipe["num_train"], 1, seed=recipe["seed"])
    real = gaussian_blur(x_real.astype(np.float32) / 255, rng.uniform(0, recipe["light_blur"], len(x_real)))
    real *= rng.uniform(*recipe["dim"], (len(real), 1, 1, 1)).astype(np.float32)
    rejects = reject_images(recipe["num_reject"], rng, recipe)
    images = np.concatenate([real, rejects])
    fill = -np.ones(len(rejects), np.int32)
    labels = {
        "shape": np.concatenate([factors[:, 0], np.full(len(rejects), REJECT, np.int32)]),
        "scale": np.concatenate([factors[:, 1], fill]),
        "x": np.concatenate([factors[:, 3], fill]),
        "y": np.concatenate([factors[:, 4], fill]),
    }
    order = rng.permutation(len(images))
    return images[order], {name: value[order] for name, value in labels.items()}


# ------------------------------------------------------------------ the network
def build_judge():
    """A convolutional trunk; the shape and scale heads read its global max-pool (what is drawn does not
    depend on where), the position heads its flattened map (where does)."""
    import keras

    inputs = keras.Input((64, 64, 1))
    h = inputs
    for filters, kernel, strides in ((32, 4, 2), (64, 4, 2), (64, 3, 1)):
        h = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", activation="relu")(h)
    what = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(h)
    what = keras.layers.Dense(128, activation="relu")(keras.layers.GlobalMaxPooling2D()(what))
    where = keras.layers.Conv2D(32, 4, strides=2, padding="same", activation="relu")(h)
    where = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(where))
    outputs = {name: keras.layers.Dense(size, name=name)(what if name in ("shape", "scale") else where)
               for name, size in HEADS}
    return keras.Model(inputs, outputs, name="sprites_judge")


def masked_cross_entropy(labels, logits):
    """Sparse softmax cross-entropy over the examples whose label is not -1."""
    import tensorflow as tf

    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    mask = tf.cast(labels >= 0, tf.float32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(labels, 0), tf.cast(logits, tf.float32))
    return tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def train_judge(recipe=RECIPE, verbose=0):
    """Trains the judge from its recipe (deterministic for a seed)."""
    import keras

    keras.utils.set_random_seed(recipe["seed"])
    images, labels = training_set(recipe)
    judge = build_judge()
    steps = -(-len(images) // recipe["batch_size"]) * recipe["epochs"]
    rate = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=steps)  # settles instead of oscillating
    judge.compile(optimizer=keras.optimizers.Adam(rate), loss={name: masked_cross_entropy for name, _ in HEADS})
    judge.fit(images, labels, batch_size=recipe["batch_size"], epochs=recipe["epochs"], shuffle=True,
              verbose=verbose)
    return judge


def recipe_key(recipe=RECIPE):
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def cache_path(recipe=RECIPE):
    return cache_dir(f"sprites-judge-{recipe_key(recipe)}.weights.h5")


def load_judge(recipe=RECIPE, log=print):
    """The cached judge of `recipe`, trained and cached first if there is none."""
    path = cache_path(recipe)
    if os.path.exists(path):
        judge = build_judge()
        judge.load_weights(path)
        return judge
    log(f"Training the sprites judge (once; cached in {path}) ...")
    judge = train_judge(recipe)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + f".tmp{os.getpid()}.weights.h5"
    judge.save_weights(temporary)
    os.replace(temporary, path)
    return judge


# ----------------------------------------------------------------- applying it
def predict(judge, images, batch_size=500):
    """{head: probabilities [N, classes]} for float images [N, 64, 64, 1] in [0, 1]."""
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    if images.shape[1:] != (64, 64, 1):
        raise ValueError(f"The sprites judge reads [N, 64, 64, 1] images; received {images.shape}.")
    outputs = {name: [] for name, _ in HEADS}
    for start in range(0, len(images), batch_size):
        logits = judge(images[start: start + batch_size], training=False)
        for name, _ in HEADS:
            outputs[name].append(tf.nn.softmax(tf.cast(logits[name], tf.float32)).numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def sample_scores(judge, samples):
    """score_decisions of generated images."""
    return score_decisions(shape_decisions(predict(judge, samples)["shape"]))


def agreement_of(probs, factors):
    """factor_agreement of the judge's most probable class per head."""
    return factor_agreement({name: probs[name].argmax(axis=1) for name, _ in HEADS}, factors)


def reconstruction_scores(judge, reconstructions, factors):
    """factor_agreement of reconstructions with their originals' factors."""
    return agreement_of(predict(judge, reconstructions), factors)


def model_scores(judge, model, data, num_samples=1000):
    """A trained sprites model judged: `sample_scores` of `num_samples` of its samples (seed 0, T = 1) and
    `reconstruction_scores` of its reconstructions of `data` (a `Split` with factors)."""
    samples = np.asarray(model.sample(num_samples, seed=0)[0])
    reconstructions = np.asarray(model.predict(data.x, batch_size=500, verbose=0))  # predict = reconstruct
    return {"samples": sample_scores(judge, samples),
            "reconstructions": reconstruction_scores(judge, reconstructions, data.factors)}


def resample_scores(judge, model, data, num_samples=1000, seed=0):
    """Where in a hierarchy (a model with a `generation_order`) its samples lose what its reconstructions
    keep: for k = 1 .. groups − 1, the first `num_samples` images of `data` decoded with their top k groups
    at the posterior means and the groups below drawn from their priors (`keras-vae resample`'s rows, one
    ε ~ N(0, I) draw at `seed`, the model's `redraw_dropped` where its whitened prior is not N(0, I)), scored as `sample_scores` plus `agreement` (`factor_agreement` with the
    originals' factors, when `data` has them): which factors the kept groups hold. (k = 0 are plain
    samples, k = groups the reconstructions: `model_scores`.)"""
    from keras_vae.codes import encode_means
    from keras_vae.explore import resampled_codes

    if model.generation_order() is None:
        raise ValueError(f"resample_scores needs a hierarchical model (nvae, hvae); received {type(model).__name__}.")
    data = data.head(num_samples)
    loc = encode_means(model, data)
    noise = np.random.default_rng(seed).standard_normal(loc.shape).astype(np.float32)
    scores = {}
    for keep in range(1, len(model.generation_order())):
        codes = resampled_codes(model, loc, noise, keep, seed)
        images = np.concatenate([np.asarray(model.decode(codes[s: s + 500])) for s in range(0, len(codes), 500)])
        probs = predict(judge, images)
        scores[keep] = score_decisions(shape_decisions(probs["shape"]))
        if data.factors is not None:
            scores[keep]["agreement"] = agreement_of(probs, data.factors)
    return scores


def judge_accuracy(judge, num=2000, seed=1):
    """The judge's own factor agreement and confident fraction on fresh real sprites (its test)."""
    x, factors, _, _ = sprites.make_sprites(num, 1, seed=seed)
    probs = predict(judge, x.astype(np.float32) / 255)
    return dict(agreement_of(probs, factors), confident=score_decisions(shape_decisions(probs["shape"]))["confident"])
