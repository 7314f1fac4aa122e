"""What the benchmark scripts share: a run trained once and reused, with the seconds its stages took."""

import json
import os
import platform
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
    the seconds of the training that finished it and `train_steps` those of its optimizer steps alone."""
    from keras_vae.train import fit

    times = read_times(config.run_dir)
    start = time.time()
    result = fit(config, verbose=2)
    if not result["complete"]:
        times.update(fit=time.time() - start, train_steps=result["timings"].get("train steps"))
        write_times(config.run_dir, times)
    return times


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
