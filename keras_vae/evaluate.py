"""`keras-vae evaluate`: how well a trained model models its data, in nats per example.

On request it adds what the literature reports beside likelihoods: the
quality of samples and reconstructions in a feature network's space
(`sample_quality`) and the disentanglement scores of disentanglement_lib
on datasets with ground-truth factors (`disentanglement_scores`).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_vae import disentanglement as disentanglement_lib
from keras_vae import losses, metrics
from keras_vae import sample_quality as sample_quality_lib
from keras_vae.codes import labelled_batches, model_labels, probe_features
from keras_vae.data.datasets import dataset_of
from keras_vae.data.pipeline import to_unit_float
from keras_vae.data.splits import fixed_binarization, load_split
from keras_vae.distributions import padding_mask
from keras_vae.errors import UserError
from keras_vae.feature_net import feature_network_for
from keras_vae.runs import load_run

EVALUATION_KEYS = (
    "elbo", "reconstruction_loss", "kl", "nll_iw", "nll_iw_stderr", "bits_per_dim", "active_units", "kl_per_dim",
    "linear_probe_accuracy", "mig", "mutual_information", "code_levels", "code_groups",
)
SAMPLE_KEYS = ("fid", "kid", "kid_std", "precision", "recall", "inception_score", "inception_score_std", "rfid",
               "psnr", "ssim", "num_samples", "feature_network")
DISENTANGLEMENT_NAMES = {  # key -> name in the table; each metric's protocol is in keras_vae.disentanglement
    "beta_vae_score": "BetaVAE score", "factor_vae_score": "FactorVAE score", "dsprites_mig": "MIG (factor grid)",
    "sap": "SAP", "dci_disentanglement": "DCI disentanglement", "dci_completeness": "DCI completeness",
    "dci_informativeness": "DCI informativeness", "modularity": "modularity", "explicitness": "explicitness",
}
DISENTANGLEMENT_KEYS = (*DISENTANGLEMENT_NAMES, "disentanglement_points")
DISENTANGLEMENT_POINTS = 10_000  # disentanglement_lib's training points per metric
PSNR_CAP = 100.0  # dB: a pixel-exact reconstruction has infinite PSNR; it counts as this in the mean
MUTUAL_INFORMATION_POINTS = 10_000  # posteriors in the aggregate of the I(x; z) estimate (it is at most log N)
MAX_DECODER_ROWS = 4000  # importance samples x batch per chunk: bounds memory for any K (~0.6 GB for conv-small)
# A mixture prior's log-density holds [samples, batch, components] float64 numbers (`metrics.mixture_log_joint`):
# at most this many per chunk (160 MB; a prior refitted to 18,000 training posteriors is that large).
MAX_PRIOR_ENTRIES = 20_000_000


def samples_per_chunk(model, iw_samples, batch_size):
    """Importance samples scored per call: bounded by the decoder's rows and by a mixture prior's size."""
    prior = getattr(model, "prior_loc", None)  # a mixture prior's [components, code] (mog, or the exemplar memory)
    entries = 1 if prior is None else int(prior.shape[0])
    return max(1, min(iw_samples, MAX_DECODER_ROWS // batch_size, MAX_PRIOR_ENTRIES // (batch_size * entries)))


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


def masked(function):
    """`function` traced, with a `mask` argument (padding masks [B, T] or None) in force inside it (see
    `distributions.padding_mask`): a mask read from outside would be captured once, at tracing."""
    def call(*args, mask=None):
        with padding_mask(mask):
            return function(*args)
    return tf.function(call, reduce_retracing=True)


def scored_dimensions(data):
    """The values a likelihood scores per example: the real steps of padded clips only."""
    steps = data.x.shape[1] if data.mask is None else float(data.mask.sum(axis=1).mean())
    return steps * int(np.prod(data.x.shape[2:]))


def fixed_noise_elbo(model, data, batch_size=100):
    """A split's mean one-sample ELBO with the evaluator's fixed noise: `evaluate_model`'s −nll_iw at K = 1,
    without its other figures. Two priors of one model are compared on the same codes."""
    log_weights = masked(lambda x, k, seed, y: model.importance_log_weights(x, k, seed, y)[0])
    total = 0.0
    for x, y, mask in labelled_batches(model, data, batch_size, masks=True):
        nll = importance_weighted_nll(lambda x, k, seed: log_weights(x, k, seed, y, mask=mask), x, 1, 1)
        total += float(tf.reduce_sum(tf.cast(nll, tf.float64)))
    return -total / len(data.x)


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
    chunk = samples_per_chunk(model, iw_samples, batch_size)
    log_weights = masked(lambda x, k, seed, y: model.importance_log_weights(x, k, seed, y)[0])
    terms_fn = masked(lambda x, y: model.compute_terms(x, False, y))

    totals = {"elbo": 0.0, "reconstruction_loss": 0.0, "kl": 0.0, "nll_iw": 0.0}
    nll_squares = 0.0  # Σ (−log p(x))², for the standard error of the mean
    kl_per_dim = None  # stays None when the KL has no per-dimension form (learned priors, VQ, AE)
    means, levels, posteriors = [], None, []
    bar = keras.utils.Progbar(math.ceil(len(data.x) / batch_size), verbose=1 if progress else 0,
                              stateful_metrics=["nll_iw"])
    for i, (x, y, mask) in enumerate(labelled_batches(model, data, batch_size, masks=True)):
        terms = terms_fn(x, y, mask=mask)
        for name in ("elbo", "reconstruction_loss", "kl"):
            totals[name] += float(tf.reduce_sum(terms[name]))
        if terms.get("kl_per_dim") is not None:
            kl_per_dim = (0 if kl_per_dim is None else kl_per_dim) + tf.reduce_sum(terms["kl_per_dim"], axis=0).numpy()
        if model.has_elbo:
            nll = importance_weighted_nll(lambda x, k, seed: log_weights(x, k, seed, y, mask=mask), x, iw_samples,
                                          chunk)
            nll = nll.numpy().astype(np.float64)
            totals["nll_iw"] += float(nll.sum())
            nll_squares += float(np.square(nll).sum())
        means.append(model.probe_features(x, y).numpy())
        if model.has_elbo and model.continuous_code and len(posteriors) * batch_size < MUTUAL_INFORMATION_POINTS:
            posteriors.append([a.numpy() for a in model.encode(x, y)])
        if not model.continuous_code:
            levels = count_codes(model, x, levels)
        bar.update(i + 1, [("nll_iw", totals["nll_iw"] / ((i + 1) * batch_size))])
    count = len(data.x)
    means = np.concatenate(means)
    result = {name: value / count for name, value in totals.items()}
    result["bits_per_dim"] = float(losses.bits_per_dim(result["nll_iw"], scored_dimensions(data)))
    result["nll_iw_stderr"] = metrics.standard_error(result["nll_iw"], nll_squares / count, count)
    if not model.has_elbo:  # a plain autoencoder: no likelihood bound exists
        result.update(elbo=None, kl=None, nll_iw=None, nll_iw_stderr=None, bits_per_dim=None)
    result["active_units"], variances = metrics.active_units(means)
    result["kl_per_dim"] = None if kl_per_dim is None else [float(v) for v in kl_per_dim / count]
    result["code_groups"] = group_summary(model.code_groups(), result["kl_per_dim"], variances)
    result["linear_probe_accuracy"] = None
    if data.y is not None and train_data is not None and train_data.y is not None:
        train_means = probe_features(model, train_data, max(batch_size, 500))
        result["linear_probe_accuracy"] = metrics.linear_probe_accuracy(train_means, train_data.y, means, data.y)
    result["mig"] = metrics.mutual_information_gap(means, data.factors) if data.factors is not None else None
    result["mutual_information"] = None
    if posteriors:  # a continuous code with a posterior: I(x; z) under the aggregate posterior
        loc, scale = (np.concatenate(part)[:MUTUAL_INFORMATION_POINTS] for part in zip(*posteriors))
        result["mutual_information"] = metrics.posterior_mutual_information(loc, scale)
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


def sample_quality(model, originals, measured, network, num_samples=None, batch_size=500, seed=0):
    """The quality of the model's samples and reconstructions, in `network`'s feature space.

    Decoder means are intensities, so the reference distribution is the split as stored (`originals`: the
    grey images of a binarized run). PSNR and SSIM compare each reconstruction with the image the model was
    given (`measured`: the binarized images of a binarized run).

    Args:
        model: a trained model.
        originals, measured: the same split as `Split`s, as stored and as the model reads it.
        network: a `keras_vae.feature_net.FeatureNetwork`.
        num_samples: prior samples to draw (default: as many as the split has images).
        seed: seeds the samples (stateless: the same seed gives the same numbers).

    Returns:
        dict with SAMPLE_KEYS: `fid`, `kid` (± `kid_std`), `precision`, `recall`, `inception_score`
        (± std) of the samples against the split; `rfid` of the reconstructions; mean `psnr` (dB) and `ssim`;
        `num_samples`; and `feature_network` (name, weights digest, test accuracy).
    """
    count = len(originals.x) if num_samples is None else num_samples
    if count < 2:
        raise UserError(f"--num-samples must be at least 2 (a covariance needs two). Received: {count}.")
    labels = model_labels(model, originals)
    samples = []
    for index, start in enumerate(range(0, count, batch_size)):
        size = min(batch_size, count - start)
        # A conditional model draws the split's own label mix, cycled.
        y = None if labels is None else tf.constant(np.resize(labels, count)[start : start + size], tf.int32)
        samples.append(np.asarray(model.sample(size, seed=seed * 100_003 + index, y=y)[0]))
    samples = np.concatenate(samples)
    reconstructions = np.concatenate([np.asarray(model.reconstruct(x, y))
                                      for x, y in labelled_batches(model, measured, batch_size)])
    real, fake, rebuilt = (network.features(images) for images in (originals.x, samples, reconstructions))
    kid, kid_std = sample_quality_lib.kid(real, fake)
    precision, recall = sample_quality_lib.precision_recall(real, fake)
    inception_score, inception_score_std = sample_quality_lib.inception_score(network.probabilities(samples))
    psnr = sample_quality_lib.psnr(reconstructions, measured.x)
    return {
        "fid": sample_quality_lib.fid(real, fake), "kid": kid, "kid_std": kid_std, "precision": precision,
        "recall": recall, "inception_score": inception_score, "inception_score_std": inception_score_std,
        "rfid": sample_quality_lib.fid(real, rebuilt),
        "psnr": float(np.mean(np.minimum(psnr, PSNR_CAP))),
        "ssim": float(np.mean(sample_quality_lib.ssim(reconstructions, measured.x)))
        if min(measured.x.shape[1:3]) >= sample_quality_lib.SSIM_WINDOW else None,  # smaller images have none
        "num_samples": count, "feature_network": network.description(),
    }


def code_representation(model, config, batch_size=500):
    """Factor-grid images (uint8) -> the model's codes [n, L] (posterior means), measured as the run measures."""
    features = tf.function(lambda x: model.probe_features(x, None), reduce_retracing=True)  # 2x faster than eager

    def represent(images):
        x = to_unit_float(fixed_binarization(config, images))
        return np.concatenate([features(tf.constant(x[i : i + batch_size])).numpy()
                               for i in range(0, len(x), batch_size)])
    return represent


def check_disentanglement(model, dataset, config, points=None):
    """The number of points to use, or a UserError saying why the run cannot be scored."""
    if dataset.ground_truth is None:
        raise UserError(f"--disentanglement needs a dataset with ground-truth factors (dsprites, sprites, "
                        f"sprites28); {config.dataset} has none.")
    if model.uses_labels:
        raise UserError(f"--disentanglement scores a code of x alone; {config.model} reads the label too.")
    points = DISENTANGLEMENT_POINTS if points is None else points
    if points < 2:
        raise UserError(f"--disentanglement-points must be at least 2. Received: {points}.")
    return points


def disentanglement_scores(model, dataset, config, points=None, seed=0):
    """disentanglement_lib's scores of the model's codes on the dataset's factor grid.

    Each metric draws its own factor combinations from the whole grid (not only the training sample) with a
    generator seeded by `seed`. `points` sets every metric's training points (disentanglement_lib's 10,000 by
    default) and half as many evaluation points.

    Returns:
        dict with DISENTANGLEMENT_KEYS: the test (eval) figure of each metric and the points used.

    Raises:
        UserError: the dataset has no ground-truth factors, or the model's code needs labels.
    """
    points = check_disentanglement(model, dataset, config, points)
    ground_truth, represent = dataset.ground_truth, code_representation(model, config)
    train, test = {"num_train": points}, {"num_test": points // 2}
    score = {name: metric(ground_truth, represent, np.random.default_rng([seed, index]), **sizes)
             for index, (name, metric, sizes) in enumerate((
                 ("beta_vae", disentanglement_lib.beta_vae_score, {**train, "num_eval": points // 2}),
                 ("factor_vae", disentanglement_lib.factor_vae_score,
                  {**train, "num_eval": points // 2, "num_variance_estimate": points}),
                 ("mig", disentanglement_lib.mig, train), ("sap", disentanglement_lib.sap_score, {**train, **test}),
                 ("dci", disentanglement_lib.dci, {**train, **test}),
                 ("modularity", disentanglement_lib.modularity_explicitness, {**train, **test})))}
    return {
        "beta_vae_score": score["beta_vae"]["eval_accuracy"], "factor_vae_score": score["factor_vae"]["eval_accuracy"],
        "dsprites_mig": score["mig"]["discrete_mig"], "sap": score["sap"]["sap_score"],
        "dci_disentanglement": score["dci"]["disentanglement"], "dci_completeness": score["dci"]["completeness"],
        "dci_informativeness": score["dci"]["informativeness_test"],
        "modularity": score["modularity"]["modularity_score"],
        "explicitness": score["modularity"]["explicitness_score_test"], "disentanglement_points": points,
    }


def evaluate_run(run_dir, split="test", iw_samples=1000, batch_size=100, progress=True, sample_metrics=False,
                 num_samples=None, disentanglement=False, disentanglement_points=None, cache_dir=None, log=print):
    """Loads a run directory and evaluates it (the library call behind `keras-vae evaluate`).

    `sample_metrics` adds SAMPLE_KEYS (`sample_quality`; the feature network is trained once per dataset and
    cached), `disentanglement` adds DISENTANGLEMENT_KEYS (`disentanglement_scores`; datasets with ground-truth
    factors). Keys not asked for are None.
    """
    config, model = load_run(run_dir)
    dataset = dataset_of(config)
    data = load_split(config, split, dataset)
    train_data = load_split(config, "train", dataset) if data.y is not None else None
    if disentanglement:  # the cheap checks before the long work
        check_disentanglement(model, dataset, config, disentanglement_points)
    network = feature_network_for(dataset, cache_dir=cache_dir, log=log) if sample_metrics else None
    result = evaluate_model(model, data, iw_samples, batch_size, train_data, progress)
    result.update(dict.fromkeys(SAMPLE_KEYS + DISENTANGLEMENT_KEYS))
    if sample_metrics:
        originals = load_split(config.replace(binarize="none"), split, dataset)
        result.update(sample_quality(model, originals, data, network, num_samples, max(batch_size, 500), config.seed))
    if disentanglement:
        result.update(disentanglement_scores(model, dataset, config, disentanglement_points, config.seed))
    return result


def group_summary(groups, kl_per_dim, variances):
    """{group: {"kl": nats, "active_units": count}} for a code in named parts ([(name, size)], the code's
    order; `Autoencoder.code_groups`), or None for a code in one part."""
    if not groups:
        return None
    summary, start = {}, 0
    for name, size in groups:
        part = slice(start, start + size)
        summary[name] = {"kl": None if kl_per_dim is None else float(np.sum(kl_per_dim[part])),
                         "active_units": int(np.sum(variances[part] > metrics.ACTIVE_THRESHOLD))}
        start += size
    return summary


def format_table(result):
    """A readable table of an evaluation."""
    lines = [f"{result['split']} split, {result['num_examples']} examples, K = {result['iw_samples']}"]
    rows = [
        ("ELBO", result["elbo"], "nats"), ("reconstruction loss", result["reconstruction_loss"], "nats"),
        ("KL", result["kl"], "nats"), ("−log p(x) (IWAE)", result["nll_iw"], "nats"),
        ("  its standard error", result["nll_iw_stderr"], "nats"),
        ("bits per dim", result["bits_per_dim"], "bits"), ("active units", result["active_units"], ""),
        ("linear probe accuracy", result["linear_probe_accuracy"], ""), ("MIG", result["mig"], ""),
        ("I(x; z)", result.get("mutual_information"), "nats"),
    ]
    rows += [
        ("FID", result.get("fid"), ""), ("KID", result.get("kid"), ""), ("precision", result.get("precision"), ""),
        ("recall", result.get("recall"), ""), ("Inception Score", result.get("inception_score"), ""),
        ("rFID", result.get("rfid"), ""), ("PSNR", result.get("psnr"), "dB"), ("SSIM", result.get("ssim"), ""),
    ] + [(name, result.get(key), "") for key, name in DISENTANGLEMENT_NAMES.items()]
    for name, value, unit in rows:
        if value is not None:
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"  {name:24s} {shown:>12s} {unit}")
    for level, figures in (result.get("code_levels") or {}).items():
        lines.append(f"  {'codes ' + (level or 'map'):24s} {figures['rate_bits']:12.2f} bits, {figures['used_codes']} "
                     f"codes used ({figures['usage']:.0%})")
    if result.get("feature_network"):
        network = result["feature_network"]
        accuracy = "" if network["accuracy"] is None else f", test accuracy {network['accuracy']:.4f}"
        lines.append(f"  sample metrics of {result['num_samples']} samples in the features of {network['name']} "
                     f"(weights {network['digest']}{accuracy})")
    for name, figures in (result.get("code_groups") or {}).items():
        kl = "" if figures["kl"] is None else f"KL {figures['kl']:.2f} nats, "
        lines.append(f"  {name:24s} {kl}{figures['active_units']} active units")
    if result["kl_per_dim"] is not None and not result.get("code_groups"):
        lines.append("  KL per dimension         " + " ".join(f"{v:.2f}" for v in result["kl_per_dim"]))
    return "\n".join(lines)
