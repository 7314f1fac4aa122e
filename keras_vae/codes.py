"""A model's codes of a split, computed in batches: what evaluation and the pictures share."""

import numpy as np
import tensorflow as tf

from keras_vae.data.splits import batches
from keras_vae.errors import UserError

BATCH = 500


def model_labels(model, data):
    """The labels a conditional model reads for `data` (a `Split`); None for the other models."""
    if not model.uses_labels:
        return None
    labels = data.labels(model.label_name)
    if labels is None:
        raise UserError(f"This {type(model).__name__} is conditional, but the {data.name} split has no labels.")
    return labels


def labelled_batches(model, data, batch_size=BATCH, masks=False):
    """(x, y or None) batches of `data` as tensors, y only for a conditional model; with `masks`,
    (x, y, padding mask or None) (see `distributions.padding_mask`)."""
    labels = model_labels(model, data)
    for start, x in zip(range(0, len(data.x), batch_size), batches(data.x, batch_size)):
        y = None if labels is None else tf.constant(labels[start : start + batch_size], tf.int32)
        if not masks:
            yield tf.constant(x), y
        else:
            mask = None if data.mask is None else tf.constant(data.mask[start : start + batch_size])
            yield tf.constant(x), y, mask


def posterior_parameters(model, data, batch_size=BATCH):
    """The posteriors q(z | x) of a split's examples: (mean, spread), each [N, code_dim]."""
    parts = [tuple(a.numpy() for a in model.encode(x, y)) for x, y in labelled_batches(model, data, batch_size)]
    return tuple(np.concatenate(column) for column in zip(*parts))


def posterior_samples(model, data, seed, batch_size=BATCH):
    """One code z ~ q(z | x) per example of a split, [N, code_dim]: draws from the aggregate posterior."""
    mean, spread = posterior_parameters(model, data, batch_size)
    return mean + spread * np.random.default_rng(seed).standard_normal(mean.shape)


def whitened_posterior_draws(model, data, seed, batch_size=BATCH):
    """One exact ancestral posterior draw per example of a split, as a hierarchy's whitened code [N, code_dim]
    (`NVAE.whitened_posterior_sample`): draws from the aggregate posterior in the code whose prior is N(0, I).
    Batch i is drawn with the stateless seed [seed, i · batch_size]."""
    return np.concatenate([model.whitened_posterior_sample(x, tf.constant([seed, start], tf.int64), y).numpy()
                           for start, (x, y) in zip(range(0, len(data.x), batch_size),
                                                    labelled_batches(model, data, batch_size))])


def encode_means(model, data, batch_size=BATCH):
    """The code means [N, code_dim] of a split."""
    return np.concatenate([model.encode(x, y)[0].numpy() for x, y in labelled_batches(model, data, batch_size)])


def probe_features(model, data, batch_size=BATCH):
    """What the probes read of a split, [N, code_dim]: the code means (the quantized code maps of a
    discrete-code model)."""
    return np.concatenate([model.probe_features(x, y).numpy() for x, y in labelled_batches(model, data, batch_size)])


def mean_kl_per_dim(model, data, limit=1000, batch_size=BATCH):
    """The mean KL of each code dimension over the first `limit` examples (zeros when the KL has no
    per-dimension form); orders the dimensions of traversals and manifolds."""
    head = data.head(limit)
    totals = None
    for x, y in labelled_batches(model, head, batch_size):
        kl = model.compute_terms(x, y=y).get("kl_per_dim")
        if kl is None:
            return np.zeros(model.code_dim)
        totals = (0 if totals is None else totals) + tf.reduce_sum(kl, axis=0).numpy()
    return totals / len(head.x)
