#!/usr/bin/env python3
"""Training-throughput benchmarks for keras_vae (figures, not tests).

    python scripts/benchmark.py replicas [--data-dir DIR] [--epochs 3] [--quick]

`replicas`: samples per second of `keras-vae fit` (the same code path) on
Fashion-MNIST with 1 device and with 2 mirrored CPU replicas, each in a fresh
process (the CPU is split before TensorFlow starts), side by side in one run.
The first epoch (tracing) is reported apart from the steady state.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "fashion_mnist")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(config_values, max_examples=None):
    """Runs keras_vae.train.fit in this process; returns timing figures (a child's job)."""
    import keras

    from keras_vae.config import FitConfig
    from keras_vae.train import fit

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    times = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        config = FitConfig(run_dir=os.path.join(scratch, "run"), export=False, **config_values)
        result = fit(config, verbose=0, log=lambda *_: None, extra_callbacks=[EpochTimer()])
    from keras_vae.data.datasets import load_dataset

    examples = len(load_dataset(config.dataset, config.data_dir).x_train)
    steady = times[1:] or times
    return {
        "examples_per_epoch": examples,
        "first_epoch_s": times[0],
        "steady_epoch_s": sum(steady) / len(steady),
        "samples_per_s": examples / (sum(steady) / len(steady)),
        "wall_s": time.perf_counter() - started,
        "val_elbo": result["val_elbo"],
    }


def run_child(config_values):
    """Measures one configuration in a fresh Python process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    command = [sys.executable, __file__, "_child", json.dumps(config_values)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"benchmark child failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def replicas(args):
    base = dict(dataset="fashion_mnist", data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                architecture=args.architecture)
    rows = {
        "1 device": run_child(dict(base, strategy="one")),
        "2 CPU replicas (mirrored)": run_child(dict(base, strategy="mirrored", cpu_replicas=2)),
    }
    reference = rows["1 device"]["samples_per_s"]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.architecture}, batch {args.batch_size}, "
          f"{args.epochs} epochs of Fashion-MNIST")
    print(f"{'configuration':28s} {'samples/s':>10s} {'ratio':>6s} {'1st epoch s':>12s} {'val ELBO':>9s}")
    for name, row in rows.items():
        print(f"{name:28s} {row['samples_per_s']:10.0f} {row['samples_per_s'] / reference:6.2f} "
              f"{row['first_epoch_s']:12.1f} {row['val_elbo']:9.2f}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    rep = sub.add_parser("replicas", help="1 device vs 2 mirrored CPU replicas")
    rep.add_argument("--data-dir", default=DEFAULT_DATA)
    rep.add_argument("--epochs", type=int, default=3)
    rep.add_argument("--batch-size", type=int, default=128)
    rep.add_argument("--architecture", default="mlp")
    rep.add_argument("--json", help="also write the figures to this file")
    child = sub.add_parser("_child")
    child.add_argument("config")
    args = parser.parse_args(argv)
    if args.mode == "_child":
        print(json.dumps(measure(json.loads(args.config))))
        return
    rows = replicas(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "cores": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
