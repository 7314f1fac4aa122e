"""Pictures of a trained model's latent space: grids as numpy arrays, saved as PNG.

Each function returns a float image [H, W, C] in [0, 1] (a grid with small
gaps); `write_picture` saves it and, when the run has TensorBoard logs, adds
it there as an image summary. The `*_picture` functions are what the
`keras-vae` picture commands compute, from a model and a `Split`:

    >>> config, model, data = open_run("runs/my-run", num=20)
    >>> write_picture("r.png", reconstruction_picture(model, data), "runs/my-run")
"""

import os
from statistics import NormalDist

import numpy as np
import tensorflow as tf

from keras_vae.codes import encode_means, mean_kl_per_dim, model_labels
from keras_vae.data.splits import load_split
from keras_vae.errors import UserError
from keras_vae.images import make_grid, save_png
from keras_vae.runs import load_run


def _labels(y, count):
    """`count` copies of one label (conditional models), or None."""
    return None if y is None else tf.fill([count], tf.cast(y, tf.int32))


def _decode(model, z, y=None):
    """Decodes codes z [N, L]; `y` is one label for all of them (conditional models)."""
    z = tf.constant(np.asarray(z, np.float32))
    return np.asarray(model.decode(z, _labels(y, len(z))))


def _means(model, x, y=None):
    """Posterior means of images x; `y` their labels [N] (conditional models)."""
    return np.asarray(model.encode(tf.constant(x), None if y is None else tf.constant(y, tf.int32))[0])


def sample_grid(model, num, temperature=1.0, seed=0, columns=None, y=None):
    """`num` prior samples (z ~ N(0, T²I)) decoded into a grid; `y`: a label to draw (conditional models)."""
    images = np.asarray(model.sample(num, seed=seed, temperature=temperature, y=y)[0])
    return make_grid(images, columns or min(num, 10))


def reconstruction_grid(model, x, columns=10, y=None):
    """Rows of inputs, each followed by a row of their reconstructions."""
    recon = np.asarray(model.reconstruct(tf.constant(x), None if y is None else tf.constant(y, tf.int32)))
    rows = []
    for start in range(0, len(x), columns):
        rows += [x[start : start + columns], recon[start : start + columns]]
    padded = [np.concatenate([r, np.full((columns - len(r),) + r.shape[1:], 0.5, np.float32)]) for r in rows]
    return make_grid(np.concatenate(padded), columns)


def level_swap_grid(model, x_a, x_b):
    """What each level of a two-level code carries. Rows: images a; images b; a's top codes decoded with b's
    bottom codes; b's top codes with a's bottom codes."""
    top, bottom = model.levels
    a, b = model.encode_indices(tf.constant(x_a)), model.encode_indices(tf.constant(x_b))
    mixed = [model.decode_indices({top: first[top], bottom: second[bottom]}) for first, second in ((a, b), (b, a))]
    return make_grid(np.concatenate([x_a, x_b, *[np.asarray(m) for m in mixed]]), len(x_a))


def group_mask(sizes, kept):
    """[Σ sizes] booleans over a code laid out as groups of `sizes`: True on the groups whose indices are in
    `kept`."""
    return np.concatenate([np.full(size, g in kept) for g, size in enumerate(sizes)])


def resampled_codes(model, loc, noise, keep, seed=0):
    """Whitened codes [N, L] that keep the first `keep` groups of `model.generation_order()` at `loc` (an
    image's posterior means) and take the groups below from `noise` (ε of their conditional priors; where the
    whitened prior is not N(0, I), as under an nvae's learned top prior, `model.redraw_dropped` draws them from it
    given the kept groups, with `seed` for what the noise does not decide)."""
    sizes = [size for _, size in model.code_groups()]
    kept = group_mask(sizes, set(model.generation_order()[:keep]))
    return model.redraw_dropped(np.where(kept, loc, noise), kept, noise, seed)


def resample_grid(model, x, temperature=1.0, seed=0):
    """What each group of a hierarchy carries (the resampling figures of NVAE and VDVAE). Rows: the images;
    then, for k from every group down to none, their codes with the top k groups kept (at the posterior
    means) and the groups below drawn from their priors given those (ε ~ N(0, T² I), the same ε in every
    row). The first such row is the reconstruction, the last is unconditional samples."""
    loc = _means(model, x)
    noise = temperature * np.random.default_rng(seed).standard_normal(loc.shape).astype(np.float32)
    groups = len(model.generation_order())
    rows = [_decode(model, resampled_codes(model, loc, noise, keep, seed)) for keep in range(groups, -1, -1)]
    return make_grid(np.concatenate([x, *rows]), len(x))


def slerp(a, b, t):
    """Spherical interpolation between codes a and b (Shoemake 1985; White 2016 for VAEs)."""
    a_norm, b_norm = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.clip(np.dot(a_norm, b_norm), -1.0, 1.0))
    if omega < 1e-6:
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def interpolation_grid(model, x_pairs, steps=10, spherical=False, y_pairs=None):
    """One row per pair: the first image, `steps` decoded points between their codes, the second.

    A conditional model encodes each image with its label (`y_pairs`) and decodes the path with the first's.
    """
    rows = []
    for i, (a_image, b_image) in enumerate(x_pairs):
        y = y_pairs[i] if y_pairs is not None else None
        a, b = _means(model, np.stack([a_image, b_image]), y)
        ts = np.linspace(0.0, 1.0, steps)
        codes = [slerp(a, b, t) if spherical else (1 - t) * a + t * b for t in ts]
        rows.append(np.concatenate([a_image[None], _decode(model, codes, None if y is None else y[0]),
                                    b_image[None]]))
    return make_grid(np.concatenate(rows), steps + 2)


def dims_by_kl(kl_per_dim):
    return list(np.argsort(-np.asarray(kl_per_dim), kind="stable"))


def traversal_grid(model, x, kl_per_dim, value_range=3.0, steps=10, dims=None, y=None):
    """One row per latent dimension (most informative first): that dimension swept over
    [-range, range] with the others fixed at the posterior mean of `x` (one image, label `y`)."""
    dims = dims if dims is not None else dims_by_kl(kl_per_dim)
    for d in dims:
        if not 0 <= d < model.code_dim:
            raise UserError(f"--dims must lie in 0..{model.code_dim - 1}. Received: {d}.")
    base = _means(model, x[None], None if y is None else [y])[0]
    codes = []
    for d in dims:
        for value in np.linspace(-value_range, value_range, steps):
            code = base.copy()
            code[d] = value
            codes.append(code)
    return make_grid(_decode(model, codes, y), steps)


def manifold_grid(model, kl_per_dim, size=15, y=None):
    """The decoded grid over the prior's quantiles 5%..95% of two dimensions (the two with the
    most KL when the latent space is larger; the others at 0, the prior mean)."""
    if model.code_dim < 2:
        raise UserError("manifold needs a latent space of at least 2 dimensions.")
    dims = [0, 1] if model.code_dim == 2 else dims_by_kl(kl_per_dim)[:2]
    quantiles = [NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, size)]
    codes = []
    for row in reversed(quantiles):  # top row = high values of the second dimension
        for column in quantiles:
            code = np.zeros(model.code_dim, np.float32)
            code[dims[0]], code[dims[1]] = column, row
            codes.append(code)
    return make_grid(_decode(model, codes, y), size)


def attribute_vector(means, labels, label):
    """Mean code of examples with `label` minus the mean code of the others."""
    chosen = labels == label
    if not chosen.any() or chosen.all():
        raise UserError(
            f"--label {label} must name a label present in some, not all, examples. "
            f"Labels present: {sorted(set(labels.tolist()))}."
        )
    return means[chosen].mean(axis=0) - means[~chosen].mean(axis=0)


def attribute_grid(model, x, vector, steps=8, scale=1.5):
    """One row per image: the image, then decodings of z + α·vector for α from 0 to `scale`."""
    rows = []
    for image, code in zip(x, _means(model, x)):
        codes = [code + alpha * vector for alpha in np.linspace(0.0, scale, steps)]
        rows.append(np.concatenate([image[None], _decode(model, codes)]))
    return make_grid(np.concatenate(rows), steps + 1)


def open_run(run_dir, num=None):
    """(config, model, test split) of a run, the split cut to its first `num` examples."""
    config, model = load_run(run_dir)
    data = load_split(config, "test")
    return config, model, (data if num is None else data.head(num))


def check_positive(**values):
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive. Received: {name}={value}.")


def check_label(model, label):
    """A label to draw: meaningful for conditional models, refused for the others."""
    if label is None:
        return None
    if not model.uses_labels:
        raise UserError(f"--label applies to conditional models (cvae, vq_vae --condition) only; this run's model is {type(model).__name__}.")
    if not 0 <= label < model.num_classes:
        raise UserError(f"--label must lie in 0..{model.num_classes - 1}. Received: label={label}.")
    return label


def check_continuous(model, command):
    if not model.continuous_code:
        raise UserError(
            f"`{command}` sweeps a continuous code, and this {type(model).__name__} has a discrete one. "
            "Use sample, reconstruct or interpolate."
        )


def reconstruction_picture(model, data, num=20):
    """The first `num` images of a split (rows) above their reconstructions."""
    check_positive(num=num)
    labels = model_labels(model, data)
    return reconstruction_grid(model, data.x[:num], min(10, num), None if labels is None else labels[:num])


def level_swap_picture(model, data, num=10):
    """`level_swap_grid` of the split's first `num` images (a) and the `num` after them (b)."""
    check_positive(num=num)
    if len(getattr(model, "levels", ())) != 2:
        raise UserError(f"`swap-levels` mixes the two code levels of a vq_vae2 model; this {type(model).__name__} "
                        "has no such levels. Use reconstruct or interpolate.")
    if len(data.x) < 2 * num:
        raise UserError(f"--num {num} needs {2 * num} images; the {data.name} split has {len(data.x)}.")
    return level_swap_grid(model, data.x[:num], data.x[num : 2 * num])


def resample_picture(model, data, num=8, temperature=1.0, seed=0):
    """`resample_grid` of a split's first `num` images."""
    check_positive(num=num, temperature=temperature)
    if model.generation_order() is None:
        raise UserError(f"`resample` keeps the top groups of a hierarchical code (nvae, hvae) and draws the "
                        f"others; this {type(model).__name__} has no such groups. Use sample or reconstruct.")
    return resample_grid(model, data.x[:num], temperature, seed)


def interpolation_picture(model, data, pairs=6, steps=10, spherical=False):
    """Paths between the codes of consecutive pairs of a split's images."""
    check_positive(pairs=pairs, steps=steps)
    x, labels = data.x[: 2 * pairs], model_labels(model, data)
    y_pairs = list(zip(labels[0 : 2 * pairs : 2], labels[1 : 2 * pairs : 2])) if labels is not None else None
    return interpolation_grid(model, list(zip(x[0::2], x[1::2])), steps, spherical, y_pairs)


def traversal_picture(model, data, index=0, value_range=3.0, steps=10, dims=None):
    """Each code dimension (most KL first, or `dims`) swept around the code of image `index`."""
    check_positive(range=value_range, steps=steps)
    check_continuous(model, "traverse")
    if not 0 <= index < len(data.x):
        raise UserError(f"--index must lie in 0..{len(data.x) - 1}. Received: index={index}.")
    labels = model_labels(model, data)
    kl_per_dim = mean_kl_per_dim(model, data) if dims is None else None  # only orders the default rows
    return traversal_grid(model, data.x[index], kl_per_dim, value_range, steps, dims,
                          y=None if labels is None else labels[index])


def manifold_picture(model, data, size=15, label=None):
    """The decoded grid over the prior's quantiles of the two dimensions with the most KL."""
    check_positive(size=size)
    check_continuous(model, "manifold")
    label = check_label(model, label)
    if model.uses_labels and label is None:
        label = 0
    kl_per_dim = mean_kl_per_dim(model, data) if model.code_dim > 2 else None  # it only picks 2 of more dims
    return manifold_grid(model, kl_per_dim, size, y=label)


def attribute_picture(model, data, label, num=8, steps=8, scale=1.5):
    """`num` images without `label`, each moved along the attribute vector of `label`."""
    check_positive(num=num, steps=steps)
    if model.uses_labels:
        raise UserError("A conditional model takes the label as an input: draw a class with "
                        "`keras-vae sample --label K` instead of adding an attribute vector.")
    if data.y is None:
        raise UserError(f"The {data.name} split has no labels, so it has no attribute vectors.")
    vector = attribute_vector(encode_means(model, data), data.y, label)
    return attribute_grid(model, data.x[data.y != label][:num], vector, steps, scale)


def write_picture(path, grid, run_dir=None, tag=None):
    """Saves the grid as PNG, and as a TensorBoard image in `<run_dir>/logs/explore` if logs exist."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"Cannot write {path}: the folder {directory} does not exist.")
    save_png(path, grid)
    logs = os.path.join(run_dir, "logs") if run_dir else None
    if logs and os.path.isdir(logs):
        writer = tf.summary.create_file_writer(os.path.join(logs, "explore"))
        with writer.as_default(step=0):
            tf.summary.image(tag or os.path.splitext(os.path.basename(path))[0], grid[None])
        writer.close()


def write_projector(out_dir, means, labels, images, label_names=None):
    """The TensorBoard Embedding Projector files: a TF checkpoint of the codes, metadata.tsv,
    a sprite image and projector_config.pbtxt (open with `tensorboard --logdir out_dir`)."""
    from tensorboard.plugins import projector

    os.makedirs(out_dir, exist_ok=True)
    embedding = tf.Variable(np.asarray(means, np.float32), name="embedding")
    tf.train.Checkpoint(embedding=embedding).save(os.path.join(out_dir, "embedding.ckpt"))
    with open(os.path.join(out_dir, "metadata.tsv"), "w") as f:
        names = label_names or {}
        for label in labels if labels is not None else np.zeros(len(means), np.int64):
            f.write(f"{names.get(int(label), int(label))}\n")
    side = int(np.ceil(np.sqrt(len(images))))
    height, width = images.shape[1:3]
    sprite = make_grid(images, side, pad=0, background=1.0)
    save_png(os.path.join(out_dir, "sprite.png"), sprite)
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    entry.sprite.image_path = "sprite.png"
    entry.sprite.single_image_dim.extend([width, height])
    projector.visualize_embeddings(out_dir, config)
    return out_dir
