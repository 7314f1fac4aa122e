"""`keras-vae evaluate`: how well a trained model models its data, in nats per example."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_vae import losses, metrics
from keras_vae.codes import labelled_batches, probe_features
from keras_vae.data.datasets import load_dataset
from keras_vae.data.splits import load_split
from keras_vae.errors import UserError
from keras_vae.runs import load_run

EVALUATION_KEYS = (
    "elbo", "reconstruction_loss", "kl", "nll_iw", "bits_per_dim", "active_units", "kl_per_dim",
    "linear_probe_accuracy", "mig", "code_levels",
)
MAX_DECODER_ROWS = 4000  # importance samples x batch per chunk: bounds memory for any K (~0.6 GB for conv-small)


def importance_weighted_nll(log_weights_fn, x, num_samples, chunk):
    """−log p(x) per example from `num_samples` importance samples drawn `chunk` at a time.

    Args:
        log_weights_fn: (x, k, seed) -> log p(x, z) - log q(z|x), [k, B].
        x: a batch [B, ...].
        num_samples: K.
        chunk: samples per call; memory is bounded by chunk × B decoder rows.
    """
    chunks = (
        log_weights_fn(x, k, tf.constant([7, i], tf.int32))
        for i, k in enumerate(metrics.chunk_sizes(num_samples, chunk))
    )
    return -metrics.chunked_log_mean_exp(chunks, num_samples)


def evaluate_model(model, data, iw_samples=1000, batch_size=100, train_data=None, progress=True):
    """The evaluation numbers for `model` on `data` (a `Split`).

    Returns:
        dict with EVALUATION_KEYS plus `split`, `iw_samples` and
        `num_examples`; `linear_probe_accuracy` needs labels and `train_data`,
        `mig` needs ground-truth factors (None otherwise).
    """
    if iw_samples <= 0 or batch_size <= 0:
        raise UserError(
            f"--iw-samples and --batch-size must be positive. Received: iw_samples={iw_samples}, "
            f"batch_size={batch_size}."
        )
    chunk = max(1, min(iw_samples, MAX_DECODER_ROWS // batch_size))
    log_weights = tf.function(lambda x, k, seed, y: model.importance_log_weights(x, k, seed, y)[0],
                              reduce_retracing=True)
    terms_fn = tf.function(model.compute_terms, reduce_retracing=True)

    totals = {"elbo": 0.0, "reconstruction_loss": 0.0, "kl": 0.0, "nll_iw": 0.0}
    kl_per_dim = None  # stays None when the KL has no per-dimension form (learned priors, VQ, AE)
    means, levels = [], None
    bar = keras.utils.Progbar(math.ceil(len(data.x) / batch_size), verbose=1 if progress else 0,
                              stateful_metrics=["nll_iw"])
    for i, (x, y) in enumerate(labelled_batches(model, data, batch_size)):
        terms = terms_fn(x, False, y)
        for name in ("elbo", "reconstruction_loss", "kl"):
            totals[name] += float(tf.reduce_sum(terms[name]))
        if terms.get("kl_per_dim") is not None:
            kl_per_dim = (0 if kl_per_dim is None else kl_per_dim) + tf.reduce_sum(terms["kl_per_dim"], axis=0).numpy()
        if model.has_elbo:
            totals["nll_iw"] += float(tf.reduce_sum(importance_weighted_nll(
                lambda x, k, seed: log_weights(x, k, seed, y), x, iw_samples, chunk)))
        means.append(model.probe_features(x, y).numpy())
        if not model.continuous_code:
            levels = count_codes(model, x, levels)
        bar.update(i + 1, [("nll_iw", totals["nll_iw"] / ((i + 1) * batch_size))])
    count = len(data.x)
    means = np.concatenate(means)
    result = {name: value / count for name, value in totals.items()}
    result["bits_per_dim"] = float(losses.bits_per_dim(result["nll_iw"], int(np.prod(data.x.shape[1:]))))
    if not model.has_elbo:  # a plain autoencoder: no likelihood bound exists
        result.update(elbo=None, kl=None, nll_iw=None, bits_per_dim=None)
    result["active_units"], _ = metrics.active_units(means)
    result["kl_per_dim"] = None if kl_per_dim is None else [float(v) for v in kl_per_dim / count]
    result["linear_probe_accuracy"] = None
    if data.y is not None and train_data is not None and train_data.y is not None:
        train_means = probe_features(model, train_data, max(batch_size, 500))
        result["linear_probe_accuracy"] = metrics.linear_probe_accuracy(train_means, train_data.y, means, data.y)
    result["mig"] = metrics.mutual_information_gap(means, data.factors) if data.factors is not None else None
    result["code_levels"] = None if levels is None else {
        level: {"rate_bits": totals / count / math.log(2), "used_codes": len(used), "usage": len(used) / model.num_codes}
        for level, (totals, used) in levels.items()}
    result.update(split=data.name, iw_samples=iw_samples, num_examples=count)
    return result


def count_codes(model, x, levels=None):
    """Adds a batch's code maps to the running {level: (Σ −log p(c_level | levels above) in nats, codes used)}
    of a discrete-code model."""
    codes = model.encode_indices(x)
    log_priors = model.level_log_priors(codes)
    levels = levels or {level: (0.0, set()) for level in model.levels}
    return {level: (nats - float(tf.reduce_sum(log_priors[level])), used | set(np.unique(codes[level].numpy())))
            for level, (nats, used) in levels.items()}


def evaluate_run(run_dir, split="test", iw_samples=1000, batch_size=100, progress=True):
    """Loads a run directory and evaluates it (the library call behind `keras-vae evaluate`)."""
    config, model = load_run(run_dir)
    dataset = load_dataset(config.dataset, config.data_dir, config.seed)
    data = load_split(config, split, dataset)
    train_data = load_split(config, "train", dataset) if data.y is not None else None
    return evaluate_model(model, data, iw_samples, batch_size, train_data, progress)


def format_table(result):
    """A readable table of an evaluation."""
    lines = [f"{result['split']} split, {result['num_examples']} examples, K = {result['iw_samples']}"]
    rows = [
        ("ELBO", result["elbo"], "nats"), ("reconstruction loss", result["reconstruction_loss"], "nats"),
        ("KL", result["kl"], "nats"), ("−log p(x) (IWAE)", result["nll_iw"], "nats"),
        ("bits per dim", result["bits_per_dim"], "bits"), ("active units", result["active_units"], ""),
        ("linear probe accuracy", result["linear_probe_accuracy"], ""), ("MIG", result["mig"], ""),
    ]
    for name, value, unit in rows:
        if value is not None:
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {name:24s} {shown:>12s} {unit}")
    for level, figures in (result.get("code_levels") or {}).items():
        lines.append(f"  {'codes ' + (level or 'map'):24s} {figures['rate_bits']:12.2f} bits, {figures['used_codes']} "
                     f"codes used ({figures['usage']:.0%})")
    if result["kl_per_dim"] is not None:
        lines.append("  KL per dimension         " + " ".join(f"{v:.2f}" for v in result["kl_per_dim"]))
    return "\n".join(lines)
