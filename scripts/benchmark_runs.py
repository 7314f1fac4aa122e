"""What the benchmark scripts share: a run trained once and reused, with the seconds its stages took."""

import json
import os
import platform
import resource
import time

TIMES_FILE = "benchmark_seconds.json"  # a run's stage seconds, kept so that a rerun reuses the run


def read_times(run_dir):
    path = os.path.join(run_dir, TIMES_FILE)
    return json.load(open(path)) if os.path.exists(path) else {}


def write_times(run_dir, times):
    with open(os.path.join(run_dir, TIMES_FILE), "w") as f:
        json.dump(times, f)


def timed_fit(config):
    """`keras_vae.train.fit(config)`, unless its run is already complete: returns the run's times, `fit` being
    the seconds of the training that finished it, `train_steps` those of its optimizer steps alone and
    `epochs` the epochs they cover (fewer than the run's when that call resumed a run stopped earlier; the
    run's own for times recorded before this was kept)."""
    from keras_vae.train import fit

    times = read_times(config.run_dir)
    start = time.time()
    result = fit(config, verbose=2)
    if not result["complete"]:
        times.update(fit=time.time() - start, train_steps=result["timings"].get("train steps"),
                     epochs=result["epochs_trained"], peak_rss_gb=peak_rss_gb())
        write_times(config.run_dir, times)
    return dict(times, epochs=times.get("epochs", config.epochs))


def peak_rss_gb(times=None):
    """The peak resident memory of this process so far, in GiB (Linux reports kilobytes), or, given a run's
    `timed_fit` times, the larger of that and the peak of the call that trained the run (a later call that
    only scores it would otherwise report its own, smaller peak)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return max(own, (times or {}).get("peak_rss_gb", 0.0))


def chunked_evaluation(model, split, count, iw_samples, cache, fingerprint, chunk=500, batch_size=100,
                       budget_seconds=None):
    """−log p(x) by `keras_vae.evaluate.evaluate_model` on the first `count` examples of `split`, `chunk` at a
    time, each chunk's figures kept in the JSON file `cache` so that a long scoring (the whole test split at
    K = 1000) can stop and go on in a later process. Stops starting chunks after `budget_seconds`.

    The evaluator seeds the importance samples of every batch alike, so chunks that are whole batches
    (`chunk` a multiple of `batch_size`) give each image the noise of a single pass: the pooled figures equal
    one evaluation of the scored images. A cache written for another `fingerprint` (another model, a retrained
    run) is discarded.

    Returns:
        dict with `nll_iw`, `nll_iw_stderr`, `num_examples` and `seconds` (of the importance-weighted
        scoring, summed over every call) over the chunks scored so far, in order from the first, and the
        first chunk's `code_groups` and `active_units` (per-group figures do not pool).
    """
    from keras_vae.evaluate import evaluate_model
    from keras_vae.files import write_json
    from keras_vae.metrics import standard_error

    if chunk % batch_size:
        raise ValueError(f"chunk ({chunk}) must be a multiple of batch_size ({batch_size}).")
    done = json.load(open(cache)) if os.path.exists(cache) else {}
    if done.get("fingerprint") != fingerprint:
        done = {"fingerprint": fingerprint, "chunks": {}}
    keys = [(first, f"{first}-{min(first + chunk, count)}") for first in range(0, count, chunk)]
    start = time.time()
    for first, key in keys:
        if key in done["chunks"]:
            continue
        if budget_seconds is not None and time.time() - start > budget_seconds:
            break
        began = time.time()
        result = evaluate_model(model, split.rows(first, first + chunk), iw_samples=iw_samples,
                                batch_size=batch_size, progress=False)
        figures = {name: result[name] for name in ("num_examples", "nll_iw", "nll_iw_stderr", "code_groups",
                                                   "active_units")}
        # NumPy scalars to plain numbers, for JSON.
        done["chunks"][key] = dict(json.loads(json.dumps(figures, default=lambda value: value.tolist())),
                                   seconds=time.time() - began)
        write_json(cache, done)  # atomic, after each chunk: an interrupted scoring keeps what it measured
    scored = []
    for _, key in keys:  # the scored prefix, so that every row scores the same images
        if key not in done["chunks"]:
            break
        scored.append(done["chunks"][key])
    if not scored:
        raise SystemExit(f"No chunk of {chunk} examples was scored within the budget ({budget_seconds} s).")
    sizes = [r["num_examples"] for r in scored]
    n = sum(sizes)
    mean = sum(r["nll_iw"] * size for r, size in zip(scored, sizes)) / n
    # Each chunk's mean square, from its mean and standard error (the inverse of metrics.standard_error).
    squares = sum(size * (r["nll_iw"] ** 2 + (r["nll_iw_stderr"] or 0.0) ** 2 * (size - 1))
                  for r, size in zip(scored, sizes)) / n
    return {"nll_iw": mean, "nll_iw_stderr": standard_error(mean, squares, n), "num_examples": n,
            "seconds": sum(r["seconds"] for r in scored), "code_groups": scored[0]["code_groups"],
            "active_units": scored[0]["active_units"]}


def file_fingerprint(path):
    """A file's size and modification time: what changes when a run's model is written again."""
    status = os.stat(path)
    return f"{status.st_size}-{status.st_mtime_ns}"


def cpu_model():
    """The CPU's model name and its widest vector units, e.g. "AMD EPYC (AVX-512, BF16, AMX)": VMs of one
    model name have differed 2.7x in train-step speed by whether they expose AVX-512, so the name alone
    cannot tell two benchmark figures' machines apart."""
    from keras_vae.train import cpu_flags, cpuinfo_field

    flags = cpu_flags()
    name = cpuinfo_field("model name") or platform.processor() or "unknown"
    return name if flags is None else f"{name} ({vector_units(flags)})"


def vector_units(flags):
    """The widest vector units among a CPU's /proc/cpuinfo `flags`, as a benchmark table names them."""
    flags = set(flags)
    if "avx512f" not in flags:
        return "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    extras = [label for flag, label in (("avx512_bf16", "BF16"), ("amx_bf16", "AMX")) if flag in flags]
    return ", ".join(["AVX-512"] + extras)
