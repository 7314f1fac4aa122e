"""`fit_prior` (`keras-vae fit-prior`): a finished run's prior fitted to the codes its encoder makes.

A discrete-code run (vq_vae, vq_vae2) trains its PixelCNN priors over its code maps. A continuous run with a
learned mixture prior (`--prior mog`) has it refitted by expectation-maximization to draws from the aggregate
posterior q(z) = E_x q(z | x) of the training split: the maximum-likelihood mixture for those codes, which
maximizes the ELBO's E_q[log p(z)] term for the trained encoder and decoder (a joint SGD fit lags it), and
whose samples fall where the decoder was trained (ex-post density estimation, Ghosh et al. 2020); or
replaced by the aggregate posterior itself, one component per training example's posterior widened by a
bandwidth chosen on held-out codes (`priors.aggregate_posterior_mixture`). `train.fit` applies the same refit
at the end of training when the model's `prior_refit` asks for it. An `nvae` run gains a contrastive prior over
its top groups (`fit_contrastive_prior`, `keras_vae.contrastive_prior`).
"""

import functools
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_vae import contrastive_prior, distribute, priors, runs
from keras_vae.codes import posterior_parameters, whitened_posterior_draws
from keras_vae.config import PRIOR_FIT_METHODS, REFIT_METHODS, RUN_HYPERPARAMETERS
from keras_vae.data.datasets import dataset_of
from keras_vae.data.splits import batches, load_split
from keras_vae.errors import UserError
from keras_vae.evaluate import fixed_noise_elbo
from keras_vae.export import export_saved_model, save_keras_model
from keras_vae.files import write_json
from keras_vae.models import get_model_class
from keras_vae.models.base import rebuilt
from keras_vae.models.vq import keyed

HELD_OUT_CODES = 0.1  # of the aggregate-posterior draws, judging when the mixture refit stops
MAX_AGGREGATE_COMPONENTS = 20000  # training posteriors in an aggregate refit (its prior's size), at most
CONTRASTIVE_DRAWS = 2  # exact posterior draws per training image that the contrastive prior's classifier reads


def with_mixture_components(model, components):
    """A copy of a `mog` model whose mixture prior has `components` components (set to the trained mixture's
    first ones, repeated): every other weight is the model's own."""
    prior = ("prior_logits", "prior_loc", "prior_raw_scale")
    resized = rebuilt(model, lambda m: [getattr(m, name) for name in prior], mixture_components=int(components))
    for name in prior:
        old = getattr(model, name).numpy()
        getattr(resized, name).assign(np.resize(old, (components,) + old.shape[1:]))
    return resized


def code_maps(model, data, batch_size=500):
    """{level: int32 code maps [N, h, w]} of a split."""
    parts = [{level: maps.numpy() for level, maps in model.encode_indices(b).items()} for b in batches(data.x, batch_size)]
    return {level: np.concatenate([part[level] for part in parts]) for level in model.levels}


def prior_inputs(model, level, codes):
    """What `level`'s prior network reads: its own maps, and the maps of the level that conditions it."""
    above = model.prior_condition(level)
    return codes[level] if above is None else (codes[level], codes[above])


class NatsPerMap(keras.callbacks.Callback):
    """Writes a prior's training and test −log p per code map (nats) to TensorBoard after each epoch."""

    def __init__(self, log_dir, level, positions):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.tag, self.positions = keyed("prior", level), positions

    def on_epoch_end(self, epoch, logs=None):
        with self.writer.as_default():
            for key, name in (("loss", "train_nats"), ("val_loss", "test_nats")):
                if key in (logs or {}):
                    tf.summary.scalar(f"{self.tag}/{name}", logs[key] * self.positions, step=epoch + 1)
        self.writer.flush()


def fit_prior(run_dir, epochs=20, batch_size=128, learning_rate=1e-3, export=True, export_dir=None,
              verbose="auto", method="em", top_groups=None, normalizer_draws=None):
    """`method` "contrastive": `fit_contrastive_prior` of an nvae run's `top_groups` top groups, log Z
    estimated from `normalizer_draws` base draws (default `contrastive_prior.NORMALIZER_DRAWS`).
    A run with a learned mixture prior (`--prior mog`): `refit_mixture(run_dir, max_iterations=epochs,
    method=method)` (`batch_size`, `learning_rate` and `verbose` do not apply to it). A discrete-code run: encodes the
    training split to code maps, fits each level's gated PixelCNN prior to them by maximum
    likelihood (top level first; a lower level's prior reads the codes above it), under the run's own
    distribution strategy, marks the prior fitted, and rewrites model.keras (atomically) so that `sample`,
    `evaluate` and exports use it. Curves go to TensorBoard under the run's logs/prior.

    Returns:
        dict with `history` ({"prior" or "prior_<level>": {loss, val_loss}} in nats per code map), `test_nats` (−log p(c) per
        example on the test split, all levels), `uniform_nats` (Σ h·w·log K), `export_path` and `replicas`
        (the replicas the priors were trained on).
    """
    if method not in PRIOR_FIT_METHODS:
        raise UserError(f"fit-prior's --method must be one of {', '.join(PRIOR_FIT_METHODS)}. Received: {method!r}.")
    if method == "contrastive":
        return fit_contrastive_prior(run_dir, top_groups, epochs, batch_size, learning_rate, export, export_dir,
                                     log=None if verbose == 0 else functools.partial(print, flush=True),
                                     normalizer_draws=normalizer_draws)
    for flag, value in (("--top-groups", top_groups), ("--normalizer-draws", normalizer_draws)):
        if value is not None:
            raise UserError(f"{flag} is an option of a contrastive prior (--method contrastive); --method {method} "
                            f"does not read it.")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate)):
        RUN_HYPERPARAMETERS[name].check(value)
    config = runs.finished_run_config(run_dir)
    prior = config.to_dict().get("prior")  # the continuous models' p(z); absent for the others
    if prior == "mog":
        return refit_mixture(run_dir, max_iterations=epochs, export=export, export_dir=export_dir, method=method)
    if method != "em":
        raise UserError(f"--method {method} refits a learned mixture prior (--prior mog); {run_dir} holds a "
                        f"{config.model} model{f' with the {prior} prior' if prior else ''}.")
    if not hasattr(get_model_class(config.model), "prior_of"):
        raise UserError(f"fit-prior trains the code priors of a discrete-code run (vq_vae, vq_vae2) or refits a "
                        f"learned mixture prior (--prior mog); {run_dir} holds a {config.model} model"
                        f"{f' with the {prior} prior' if prior else ''}.")
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)  # before anything starts TF's devices
    if batch_size % strategy.num_replicas_in_sync:
        raise UserError(f"--batch-size must divide evenly over the run's {strategy.num_replicas_in_sync} replicas. "
                        f"Received: batch_size={batch_size}.")
    with strategy.scope():
        _, model = runs.load_run(run_dir)  # its variables under the run's strategy
    dataset = dataset_of(config)
    train_codes, test_codes = (code_maps(model, load_split(config, split, dataset)) for split in ("train", "test"))
    keras.utils.set_random_seed(config.seed)
    history = {}
    for level in model.levels:
        network = model.prior_of(level)
        positions = math.prod(model.grids[level])
        with strategy.scope():
            network.trainable = True
            network.compile(optimizer=keras.optimizers.Adam(learning_rate),
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        logs = NatsPerMap(os.path.join(run_dir, runs.LOG_DIR, "prior"), level, positions)
        fitted = network.fit(prior_inputs(model, level, train_codes), train_codes[level],
                             validation_data=(prior_inputs(model, level, test_codes), test_codes[level]),
                             epochs=epochs, batch_size=batch_size, verbose=verbose, callbacks=[logs]).history
        network.trainable = False
        history[keyed("prior", level)] = {name: [float(v) * positions for v in values] for name, values in fitted.items()}
    model.prior_fitted.assign(1.0)
    positions = sum(math.prod(grid) for grid in model.grids.values())
    return {"history": history, "test_nats": sum(h["val_loss"][-1] for h in history.values()),
            "uniform_nats": positions * math.log(model.num_codes),
            "export_path": keep_prior(model, config, run_dir, runs.PRIOR_HISTORY_FILE, history, export, export_dir),
            "replicas": strategy.num_replicas_in_sync}


def keep_prior(model, config, run_dir, record_file, record, export, export_dir):
    """Rewrites the run's model.keras (atomically) with its fitted prior, writes the fit's record to
    `record_file` in the run, and exports a new version when `export`: returns the export path or None."""
    save_keras_model(model, os.path.join(run_dir, runs.MODEL_FILE))
    write_json(os.path.join(run_dir, record_file), record)
    if not export:
        return None
    return export_saved_model(model, export_dir or config.export_dir, runs.export_name(config, run_dir))


def refit_mixture_prior(model, train, test, seed, method="em", max_iterations=20, tolerance=1e-4):
    """Refits the mixture prior of a `--prior mog` model, in place, to its aggregate posterior over the split
    `train`, and keeps the refit only where held-out codes (one draw z ~ q(z | x) for a tenth of `train`,
    shuffled by `seed`) are likelier under it than under the trained mixture.

    `method` "em": expectation-maximization on one draw per other training example, started from the
    trained mixture and stopped when the held-out codes stop gaining `tolerance` nats (at most
    `max_iterations` iterations). "aggregate": one component per training example, its posterior widened by a
    bandwidth chosen on the held-out codes (`priors.aggregate_posterior_mixture`), for every other training
    example (at most MAX_AGGREGATE_COMPONENTS): the model is then rebuilt with a mixture of that size
    (`with_mixture_components`); kept when it raises the held-out codes' mean log p(z) by `tolerance` nats
    or more.

    Returns:
        (the model with the refitted prior, or the model unchanged, and a dict with `method`, `history` ({"prior_em": the held-out codes' mean log p(z) at the start and after
        each EM iteration} or {"prior_aggregate": {bandwidth factor: theirs}, "trained_mixture": theirs}),
        `refitted` (whether the model's prior changed), `test_elbo_before` and `test_elbo_after` (the `test`
        split's ELBO with the old and the new prior, nats, with the same fixed noise: `fixed_noise_elbo`),
        `codes` (the number of training examples encoded) and `components` (the mixture's)).
    """
    if method not in REFIT_METHODS:
        raise UserError(f"The mixture refit's method must be one of {', '.join(REFIT_METHODS)}. "
                        f"Received: {method!r}.")
    noise, shuffle = np.random.SeedSequence(seed).spawn(2)
    mean, spread = posterior_parameters(model, train)
    codes = mean + spread * np.random.default_rng(noise).standard_normal(mean.shape)
    order = np.random.default_rng(shuffle).permutation(len(codes))
    mean, spread, codes = mean[order], spread[order], codes[order]
    held_out = max(1, int(HELD_OUT_CODES * len(codes)))  # what judges a refit
    if len(codes) - held_out < 1:
        raise UserError(f"A mixture refit needs at least 2 training examples (one to hold out). Received: "
                        f"{len(codes)}.")
    before = fixed_noise_elbo(model, test)  # the same z before and after
    current = tuple(v.numpy() for v in (model.prior_logits, model.prior_loc,
                                        model.prior().components_distribution.distribution.scale))
    if method == "em":
        logits, loc, scale, curve = priors.fit_mixture(codes[held_out:], *current, held_out=codes[:held_out],
                                                       max_iterations=max_iterations, tolerance=tolerance)
        history, refitted = {"prior_em": curve}, len(curve) > 1
    else:
        chosen = np.arange(held_out, min(len(codes), held_out + MAX_AGGREGATE_COMPONENTS))
        logits, loc, scale, scores = priors.aggregate_posterior_mixture(mean[chosen], spread[chosen],
                                                                        codes[:held_out])
        trained = priors.mean_log_likelihood(codes[:held_out], *current)
        history = {"prior_aggregate": {str(factor): value for factor, value in scores.items()},
                   "trained_mixture": trained}
        # As EM's steps: kept when it gains `tolerance` (the same mixture again differs only by rounding).
        # The held-out codes also chose the bandwidth, so the gain is slightly optimistic (best of a few).
        refitted = max(scores.values()) - trained >= tolerance
    after = before
    if refitted:
        if len(logits) != len(current[0]):
            model = with_mixture_components(model, len(logits))
        priors.assign_mixture(model, logits, loc, scale)
        after = fixed_noise_elbo(model, test)
    return model, {"method": method, "history": history, "refitted": bool(refitted), "test_elbo_before": before,
                   "test_elbo_after": after, "codes": len(codes),
                   "components": len(logits) if refitted else len(current[0])}


def refit_mixture(run_dir, max_iterations=20, export=True, export_dir=None, tolerance=1e-4, method="em"):
    """`refit_mixture_prior` of a finished run's model (`--prior mog`) on its training split, judged on its
    test split; a refit rewrites model.keras (atomically) and exports a new version; when the refit is not
    kept, the run is left as it was. Training the run further is then refused (its checkpoints predate
    the refit).

    Returns:
        `refit_mixture_prior`'s dict, with `iterations` (EM iterations taken; for "aggregate", 1 when the
        refit was kept), `export_path` and `replicas` (1: the refit runs on the host).
    """
    config, model = runs.load_run(run_dir)
    dataset = dataset_of(config)
    train, test = (load_split(config, split, dataset) for split in ("train", "test"))
    model, result = refit_mixture_prior(model, train, test, config.seed, method, max_iterations, tolerance)
    iterations = len(result["history"]["prior_em"]) - 1 if method == "em" else int(result["refitted"])
    result = dict(result, iterations=iterations, export_path=None, replicas=1)
    if not result["refitted"]:
        return result
    record = {key: result[key] for key in ("method", "test_elbo_before", "test_elbo_after", "codes", "components")}
    result["export_path"] = keep_prior(model, config, run_dir, runs.MIXTURE_REFIT_FILE,
                                       dict(result["history"], **record), export, export_dir)
    return result


def trained_top_prior_draws(model):
    """The contrastive prior's base draws for `model` (an nvae with a contrastive part): (count, dim, rng) ->
    [count, dim] float32 draws of the top groups' ε under the prior it was trained with; `rng` (NumPy) seeds
    them. N(0, I) (`contrastive_prior.normal_draws`) unless a learned top prior covers those groups."""
    if not model.mixture_groups:
        return contrastive_prior.normal_draws
    sample = tf.function(lambda count, seed: model.trained_prior_codes(count, seed)[:, :model.top_dim],
                         reduce_retracing=True)

    def draw(count, dim, rng):
        codes = sample(int(count), tf.constant(rng.integers(2**31, size=2), tf.int64))  # a trace per count
        return np.asarray(codes, np.float32)[:, :dim]
    return draw


def fit_contrastive_prior(run_dir, top_groups=None, epochs=20, batch_size=128, learning_rate=1e-3, export=True,
                          export_dir=None, log=None, normalizer_draws=None):
    """Gives a finished nvae run a contrastive prior over its top `top_groups` groups (default: every scale's
    but the finest, or a learned top prior's groups, `NVAE.default_contrastive_groups`): the classifier
    (`contrastive_prior.RatioNetwork`) learns, by `contrastive_prior.fit_ratio`, to tell CONTRASTIVE_DRAWS
    exact posterior draws of the top groups (whitened) of each training image from draws of the prior the
    run was trained with (`trained_top_prior_draws`: N(0, I), or its learned top prior's); one draw of each
    of a held-out HELD_OUT_CODES of the training images chooses the epoch kept. log Z is then estimated over
    `normalizer_draws` of that prior's draws (default `contrastive_prior.NORMALIZER_DRAWS`; its Monte-Carlo
    error shrinks as 1/√draws, and over a learned prior each draw takes a pass per position).
    The test split is read only for the figures returned. model.keras is rewritten (atomically) with it, so
    that `sample` draws through it and `evaluate`, `score` and exports use it, and a new version is exported
    when `export`. A second fit replaces the first one's classifier. Training the run further is then
    refused (its checkpoints predate the prior).

    Returns:
        dict with `groups`, `dimensions` (of the reweighted code), `history` (`fit_ratio`'s, nats),
        `log_normalizer` (log Z), `held_out_gain` (the test images' draws' mean log r − log Z: nats per code
        by which the new prior beats the trained one on codes of images it never read), `effective_sample_size`
        (SIR's, out of `contrastive_prior.PROPOSALS`: its mean over log Z's draws taken in rows of that many, as
        SIR's proposals are such draws), `test_elbo_before`
        and `test_elbo_after` (`fixed_noise_elbo` of the test split under the run's prior before the fit, the
        trained one unless an earlier fit gave it a contrastive part, and under the new prior),
        `codes` (training draws read), `normalizer_draws`, `export_path` and `replicas` (1: the fit runs on the
        host).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate)):
        RUN_HYPERPARAMETERS[name].check(value)
    normalizer_draws = contrastive_prior.NORMALIZER_DRAWS if normalizer_draws is None else normalizer_draws
    proposals = contrastive_prior.PROPOSALS
    if not isinstance(normalizer_draws, int) or isinstance(normalizer_draws, bool) or normalizer_draws < proposals:
        raise UserError(f"--normalizer-draws (the base prior's draws that estimate log Z, and SIR's effective sample "
                        f"size in rows of its {proposals:,} proposals) must be an integer of at least {proposals:,}. "
                        f"Received: normalizer_draws={normalizer_draws!r}.")
    config, model = runs.load_run(run_dir)
    if not hasattr(model, "with_contrastive_prior"):
        raise UserError(f"--method contrastive reweights the top groups of an nvae run's prior; {run_dir} holds a "
                        f"{config.model} model.")
    base = model
    model = base.with_contrastive_prior(base.default_contrastive_groups() if top_groups is None else top_groups)
    dataset = dataset_of(config)
    train, test = (load_split(config, split, dataset) for split in ("train", "test"))
    shuffle, fitting, normalizer = np.random.SeedSequence(config.seed).spawn(3)
    dim = model.top_dim
    draws = [whitened_posterior_draws(model, train, config.seed + 1 + d)[:, :dim] for d in range(CONTRASTIVE_DRAWS)]
    order = np.random.default_rng(shuffle).permutation(len(train.x))
    held = max(1, int(HELD_OUT_CODES * len(order)))
    if len(order) - held < 1:
        raise UserError(f"A contrastive prior needs at least 2 training examples (one to hold out). Received: "
                        f"{len(order)}.")
    positives = np.concatenate([d[order[held:]] for d in draws])
    draw = trained_top_prior_draws(model)
    history = contrastive_prior.fit_ratio(model.contrast, positives, draws[0][order[:held]], epochs, batch_size,
                                          learning_rate, fitting, log, draw=draw)
    # The draws that estimate log Z are SIR's proposals too: rows of them give its effective sample size.
    log_ratios = contrastive_prior.noise_log_ratios(model.contrast, normalizer_draws, dim,
                                                    np.random.default_rng(normalizer), draw=draw)
    log_z, ess = contrastive_prior.log_normalizer_and_sample_size(log_ratios, proposals)
    model.contrast_log_normalizer.assign(log_z)
    test_draws = whitened_posterior_draws(model, test, config.seed)[:, :dim]
    record = {"groups": model.contrastive_groups, "dimensions": dim, "history": history, "log_normalizer": log_z,
              "held_out_gain": float(np.mean(contrastive_prior.log_ratios_of(model.contrast, test_draws)) - log_z),
              "effective_sample_size": ess, "test_elbo_before": fixed_noise_elbo(base, test),
              "test_elbo_after": fixed_noise_elbo(model, test), "codes": len(positives),
              "normalizer_draws": normalizer_draws}
    export_path = keep_prior(model, config, run_dir, runs.CONTRASTIVE_PRIOR_FILE, record, export, export_dir)
    return dict(record, export_path=export_path, replicas=1)
