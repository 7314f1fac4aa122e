#!/usr/bin/env python3
"""Side-by-side benchmark of keras_vae against the canonical Keras VAE (figures, not tests).

    python scripts/benchmark.py [--quick] [--data-dir DIR] [--epochs N]
    python scripts/benchmark.py replicas [--epochs 3]
    python scripts/benchmark.py levers           # throughput of fit options, for choosing defaults
    python scripts/benchmark.py scale            # cost vs dataset, batch, latent and image size
    python scripts/benchmark.py ab --architecture conv-small   # interleaved reference vs keras_vae speed
    python scripts/benchmark.py quality          # time to quality: the defaults' seconds to each reference's ELBO

The main run trains, in one run, on the same data (Fashion-MNIST), batch size,
epochs and seed:
  (a) reference VAEs written here the way the canonical Keras 3 example is: a
      `Sampling` layer, a `keras.Model` with a `tf.GradientTape` train_step,
      closed-form KL, summed binary cross-entropy, default `compile` — with the
      conv-small design, and with a Dense 512-512 MLP (latent 16, Adam 1e-3);
  (b) this package's `conv-small` (float32 and mixed_bfloat16) and default
      `mlp` models through `keras_vae.train.fit`, the code path of `keras-vae fit`.
Each runs in a fresh process. Reported: steady-state training samples/s (the
first epoch, which traces, apart), whole-process wall time, peak RSS, test
ELBO and nll_iw (K importance samples on the first test images), evaluation
importance-samples/s, and achieved GFLOP/s against matmul peaks measured in
the same run. Writes benchmarks/results.json and benchmarks/RESULTS.md
(`--quick`: results-quick.json and RESULTS-quick.md, not kept in git).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmark_runs import cpu_model, peak_rss_gb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "fashion_mnist")
OUT_DIR = os.path.join(REPO, "benchmarks")


# --------------------------------------------------------------------------- children
def child_peak(_):
    """Matmul peaks (GFLOP/s) for float32 and bfloat16, 2048×2048."""
    import tensorflow as tf

    peaks = {}
    for dtype in (tf.float32, tf.bfloat16):
        n = 2048
        a = tf.cast(tf.random.normal([n, n]), dtype)
        b = tf.cast(tf.random.normal([n, n]), dtype)
        matmul = tf.function(lambda: tf.matmul(a, b))
        matmul().numpy()
        best = 0.0
        for _ in range(3):
            reps = 10
            start = time.perf_counter()
            for _ in range(reps):
                result = matmul()
            result.numpy()
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
        peaks[dtype.name] = best
    return peaks


class EpochTimer:
    """A Keras callback recording each epoch's training time, validation excluded."""

    @staticmethod
    def make(times):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start, self.stop = time.perf_counter(), None

            def on_test_begin(self, logs=None):  # fit's validation pass starts: training is over
                if self.stop is None:
                    self.stop = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append((self.stop or time.perf_counter()) - self.start)

        return Timer()


def throughput(times, examples):
    """Steady state = the median epoch after the first (which traces): on this shared 2-core
    VM single epochs of the same work vary by up to 1.8x, so a median of several epochs is
    the robust figure; the mean is kept beside it."""
    import statistics

    steady = times[1:] or times
    median = statistics.median(steady)
    return {"first_epoch_s": times[0], "steady_epoch_s": median, "mean_epoch_s": sum(steady) / len(steady),
            "samples_per_s": examples / median, "mean_samples_per_s": examples / (sum(steady) / len(steady))}


class TestCurve:
    """A Keras callback: after each epoch, (seconds since `launched` not spent in this callback, `score()`).

    `launched` is the parent's time.time() when it started the process, so the seconds include start-up and
    everything the run does between epochs (its own validation too), but not this callback's scoring."""

    @staticmethod
    def make(curve, launched, score):
        import keras

        class Curve(keras.callbacks.Callback):
            scoring = 0.0

            def on_epoch_end(self, epoch, logs=None):
                begin = time.time()
                elapsed = begin - launched - self.scoring
                curve.append((elapsed, score(self.model)))
                self.scoring += time.time() - begin

        return Curve()


def time_to_reach(curve, target):
    """The seconds of the first point of `curve` [(seconds, test ELBO), ...] whose ELBO is at least `target`;
    None when none is."""
    return next((seconds for seconds, elbo in curve if elbo >= target), None)


def split_elbo(model, data):
    """`evaluate_model`'s report of the whole split at one sample per image (fixed noise): its ELBO, nats."""
    from keras_vae.evaluate import evaluate_model

    return evaluate_model(model, data, iw_samples=1, batch_size=500, progress=False)


def test_scorer(config, dataset=None, model=None):
    """score(trained model) -> test ELBO, for `TestCurve`; `model` scores that model instead (an adapter of the
    one being trained). The test split is loaded at the first call, inside the scoring the clock leaves out."""
    from keras_vae.data.splits import load_split

    test = []

    def score(trained):
        if not test:
            test.append(load_split(config, "test", dataset))
        return split_elbo(model or trained, test[0])["elbo"]

    return score


def evaluation(model, data, iw_samples, iw_examples):
    """Test ELBO on the whole split; nll_iw on its first `iw_examples` images, timed."""
    from keras_vae.data.splits import Split
    from keras_vae.evaluate import evaluate_model

    elbo = split_elbo(model, data)
    subset = Split(data.name, data.x[:iw_examples])
    start = time.perf_counter()
    iw = evaluate_model(model, subset, iw_samples=iw_samples, batch_size=100, progress=False)
    seconds = time.perf_counter() - start
    return {"test_elbo": elbo["elbo"], "test_reconstruction": elbo["reconstruction_loss"], "test_kl": elbo["kl"],
            "nll_iw": iw["nll_iw"], "iw_samples_per_s": iw_samples * iw_examples / seconds}


def trained_examples(job):
    """Examples per epoch that fit trains on: whole batches only."""
    batch = job["config"].get("batch_size", 128)
    return job["train_examples"] // batch * batch


def timed_fit(job, run_dir, callbacks=()):
    """keras_vae.train.fit (the keras-vae fit code path) with epoch timing; returns (config, result, figures)."""
    from keras_vae.config import FitConfig
    from keras_vae.train import fit

    times = []
    config = FitConfig(run_dir=run_dir, export=False, **job["config"])
    result = fit(config, verbose=0, log=lambda *_: None, extra_callbacks=[EpochTimer.make(times), *callbacks])
    return config, result, throughput(times, trained_examples(job))


def child_package(job):
    """This package: trained through train.fit, reloaded from its run directory, evaluated."""
    from keras_vae import flops
    from keras_vae.data.splits import load_split
    from keras_vae.runs import load_run

    with tempfile.TemporaryDirectory() as scratch:
        config, _, figures = timed_fit(job, os.path.join(scratch, "run"))
        _, model = load_run(config.run_dir)
        figures.update(evaluation(model, load_split(config, "test"), job["iw_samples"], job["iw_examples"]))
        figures["train_flops_per_example"] = flops.training_flops(model.encoder, model.decoder)
    return figures


def reference_networks(design, image_shape, latent_dim):
    """The canonical Keras example's encoder (z_mean, z_log_var, z) and sigmoid decoder."""
    import keras
    from keras import layers, ops

    class Sampling(layers.Layer):
        """Uses (z_mean, z_log_var) to sample z, the vector encoding a digit."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(1337)

        def call(self, inputs):
            z_mean, z_log_var = inputs
            batch, dim = ops.shape(z_mean)[0], ops.shape(z_mean)[1]
            epsilon = keras.random.normal(shape=(batch, dim), seed=self.seed_generator)
            return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    height, width, channels = image_shape
    encoder_inputs = keras.Input(shape=image_shape)
    if design == "conv-small":
        x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(encoder_inputs)
        x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(16, activation="relu")(x)
    else:
        x = layers.Flatten()(encoder_inputs)
        x = layers.Dense(512, activation="relu")(x)
        x = layers.Dense(512, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling()([z_mean, z_log_var])
    encoder = keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")

    latent_inputs = keras.Input(shape=(latent_dim,))
    if design == "conv-small":
        x = layers.Dense(height // 4 * width // 4 * 64, activation="relu")(latent_inputs)
        x = layers.Reshape((height // 4, width // 4, 64))(x)
        x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
        x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
        decoder_outputs = layers.Conv2DTranspose(channels, 3, activation="sigmoid", padding="same")(x)
    else:
        x = layers.Dense(512, activation="relu")(latent_inputs)
        x = layers.Dense(512, activation="relu")(x)
        x = layers.Dense(height * width * channels, activation="sigmoid")(x)
        decoder_outputs = layers.Reshape(image_shape)(x)
    decoder = keras.Model(latent_inputs, decoder_outputs, name="decoder")
    return encoder, decoder


def reference_vae_class():
    import keras
    import tensorflow as tf
    from keras import ops

    class VAE(keras.Model):
        def __init__(self, encoder, decoder, **kwargs):
            super().__init__(**kwargs)
            self.encoder = encoder
            self.decoder = decoder
            self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
            self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
            self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

        @property
        def metrics(self):
            return [self.total_loss_tracker, self.reconstruction_loss_tracker, self.kl_loss_tracker]

        def train_step(self, data):
            with tf.GradientTape() as tape:
                z_mean, z_log_var, z = self.encoder(data)
                reconstruction = self.decoder(z)
                reconstruction_loss = ops.mean(
                    ops.sum(keras.losses.binary_crossentropy(data, reconstruction), axis=(1, 2))
                )
                kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
                kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
                total_loss = reconstruction_loss + kl_loss
            grads = tape.gradient(total_loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            self.total_loss_tracker.update_state(total_loss)
            self.reconstruction_loss_tracker.update_state(reconstruction_loss)
            self.kl_loss_tracker.update_state(kl_loss)
            return {m.name: m.result() for m in self.metrics}

    return VAE


def reference_adapter(encoder, decoder, latent_dim, image_shape):
    """Lets keras_vae's evaluator score the reference: q = N(z_mean, exp(z_log_var / 2)), p = Bernoulli(probs)."""
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    from keras_vae.distributions import standard_normal_prior
    from keras_vae.models.vae import VAE

    tfd = tfp.distributions

    class Adapter:
        has_elbo, uses_labels, continuous_code = True, False, True
        corrupt = VAE.corrupt
        probe_features = VAE.probe_features
        compute_terms = VAE.compute_terms
        importance_log_weights = VAE.importance_log_weights
        noise_seed = VAE.noise_seed
        code_groups = VAE.code_groups  # one flat code
        dequantized, dequantize = VAE.dequantized, "none"

        def __init__(self):
            self.latent_dim, self.code_dim, self.image_shape = latent_dim, latent_dim, image_shape
            self.seed_generator = keras.random.SeedGenerator(0)

        def encode(self, x, y=None):
            z_mean, z_log_var, _ = encoder(x)
            return z_mean, tf.exp(0.5 * z_log_var)

        def posterior(self, x, training=False, y=None):
            return tfd.Independent(tfd.Normal(*self.encode(x)), 1)

        def likelihood(self, z, training=False, y=None):
            probs = tf.clip_by_value(decoder(z), 1e-7, 1 - 1e-7)  # as keras's binary_crossentropy clips
            return tfd.Independent(tfd.Bernoulli(probs=probs, dtype=tf.float32), len(image_shape))

        def prior(self):
            return standard_normal_prior(latent_dim)

    return Adapter()


def train_reference(job, callbacks_for=None):
    """Trains the canonical Keras VAE plainly (dynamic binarization in a plain tf.data
    pipeline); returns (config, dataset, encoder, decoder, throughput figures).
    `callbacks_for(config, dataset, encoder, decoder)` gives extra callbacks."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_vae.config import FitConfig
    from keras_vae.data.datasets import dataset_of

    config = FitConfig(**job["config"])
    keras.utils.set_random_seed(config.seed)
    dataset = dataset_of(config)
    x_train = dataset.x_train.astype(np.float32) / 255.0
    train = (
        tf.data.Dataset.from_tensor_slices(x_train)
        .shuffle(len(x_train), seed=config.seed)
        .batch(config.batch_size)
        .map(lambda x: tf.cast(tf.random.uniform(tf.shape(x)) < x, tf.float32))
        .prefetch(tf.data.AUTOTUNE)
    )
    encoder, decoder = reference_networks(job["design"], dataset.image_shape, config.latent_dim)
    vae = reference_vae_class()(encoder, decoder)
    vae.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    times = []
    extra = callbacks_for(config, dataset, encoder, decoder) if callbacks_for else []
    vae.fit(train, epochs=config.epochs, verbose=0, callbacks=[EpochTimer.make(times), *extra])
    return config, dataset, encoder, decoder, throughput(times, len(x_train))


def child_reference_speed(job):
    """Training throughput only, of the canonical Keras VAE (for the interleaved A/B mode)."""
    return train_reference(job)[-1]


def child_reference(job):
    """The canonical Keras VAE: trained, then scored with keras_vae's evaluator."""
    from keras_vae import flops
    from keras_vae.data.splits import load_split

    config, dataset, encoder, decoder, figures = train_reference(job)
    model = reference_adapter(encoder, decoder, config.latent_dim, dataset.image_shape)
    figures.update(evaluation(model, load_split(config, "test", dataset), job["iw_samples"], job["iw_examples"]))
    figures["train_flops_per_example"] = flops.training_flops(encoder, decoder)
    return figures


def child_reference_curve(job):
    """The canonical Keras VAE's test ELBO after each epoch, against the seconds since its process started."""
    curve = []

    def callbacks_for(config, dataset, encoder, decoder):
        model = reference_adapter(encoder, decoder, config.latent_dim, dataset.image_shape)
        return [TestCurve.make(curve, job["launched"], test_scorer(config, dataset, model))]

    figures = train_reference(job, callbacks_for)[-1]
    return dict(figures, curve=curve)


def child_package_curve(job):
    """`keras-vae fit`'s test ELBO after each epoch (its defaults for the data unless the job sets them), against
    the seconds since its process started."""
    from keras_vae.config import FitConfig

    curve = []
    scorer = test_scorer(FitConfig(**job["config"]))
    with tempfile.TemporaryDirectory() as scratch:
        config, _, figures = timed_fit(job, os.path.join(scratch, "run"), [TestCurve.make(curve, job["launched"], scorer)])
    return dict(figures, curve=curve, config=config.to_dict())


def run_child(kind, job):
    """Runs one measurement in a fresh process; adds its wall time and peak RSS."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    start = time.perf_counter()
    job = dict(job, launched=time.time())  # the curve children count their seconds from here
    result = subprocess.run([sys.executable, __file__, "_child", kind, json.dumps(job)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"benchmark child {kind} failed:\n{result.stderr[-4000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["wall_s"] = time.perf_counter() - start
    return figures


def child_main(kind, job):
    children = {"peak": child_peak, "package": child_package, "reference": child_reference, "fit": child_fit,
                "reference_speed": child_reference_speed, "reference_curve": child_reference_curve,
                "package_curve": child_package_curve}
    figures = children[kind](json.loads(job))
    figures["peak_rss_mb"] = 1024 * peak_rss_gb()
    print(json.dumps(figures))


def child_fit(job):
    """Throughput only, of keras_vae.train.fit with the given config (for `replicas`, `levers`, `scale`, `ab`)."""
    with tempfile.TemporaryDirectory() as scratch:
        _, result, figures = timed_fit(job, os.path.join(scratch, "run"))
    figures["val_elbo"] = result["val_elbo"]
    return figures


# ------------------------------------------------------------------------ main modes
def make_data(args, scratch):
    """The dataset config: full Fashion-MNIST, or (--quick) a seeded subset written as .npz."""
    if not args.quick:
        return {"dataset": "fashion_mnist", "data_dir": args.data_dir}, 60000
    import numpy as np

    from keras_vae.data.datasets import load_dataset

    data = load_dataset("fashion_mnist", args.data_dir)
    path = os.path.join(scratch, "fashion_subset.npz")
    np.savez(path, x=data.x_train[:args.quick_train], y=data.y_train[:args.quick_train],
             x_test=data.x_test[:2000], y_test=data.y_test[:2000])
    return {"dataset": path}, args.quick_train


def main_benchmark(args):
    os.makedirs(OUT_DIR, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        data, train_examples = make_data(args, scratch)
        common = dict(data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, latent_dim=16)
        job = dict(iw_samples=args.iw_samples, iw_examples=args.iw_examples, train_examples=train_examples)
        peaks = run_child("peak", {})
        runs = {
            "reference conv-small": ("reference", dict(job, design="conv-small", config=common)),
            "keras_vae conv-small": ("package", dict(job, config=dict(common, architecture="conv-small"))),
            "keras_vae conv-small bf16": ("package", dict(job, config=dict(common, architecture="conv-small",
                                                                           precision="mixed_bfloat16"))),
            "reference mlp": ("reference", dict(job, design="mlp", config=common)),
            "keras_vae mlp": ("package", dict(job, config=dict(common, architecture="mlp"))),
        }
        rows = {}
        for name, (kind, spec) in runs.items():
            print(f"... {name}", file=sys.stderr, flush=True)
            rows[name] = run_child(kind, spec)
    for name, row in rows.items():
        peak = peaks["bfloat16"] if "bf16" in name else peaks["float32"]
        row["gflops"] = row["samples_per_s"] * row["train_flops_per_example"] / 1e9
        row["fraction_of_peak"] = row["gflops"] / peak
    report = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "quick": args.quick,
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "latent_dim": 16,
                     "train_examples": train_examples, "iw_samples": args.iw_samples,
                     "iw_examples": args.iw_examples},
        "matmul_peak_gflops": peaks, "rows": rows, "targets": targets(rows, peaks),
        "total_wall_s": time.perf_counter() - started,
    }
    write_report(report)
    return report


def targets(rows, peaks):
    ref, ours, bf16 = rows["reference conv-small"], rows["keras_vae conv-small"], rows["keras_vae conv-small bf16"]
    mlp, ref_mlp = rows["keras_vae mlp"], rows["reference mlp"]
    return {
        "conv-small fp32 speed-up (>= 1.3)": ours["samples_per_s"] / ref["samples_per_s"],
        "conv-small fp32 ELBO minus reference (>= -0.5 nats)": ours["test_elbo"] - ref["test_elbo"],
        "conv-small bf16 speed-up (>= 2.5)": bf16["samples_per_s"] / ref["samples_per_s"],
        "conv-small bf16 ELBO vs fp32 (relative, <= 0.01)": abs(bf16["test_elbo"] - ours["test_elbo"]) / abs(ours["test_elbo"]),
        "mlp fraction of fp32 matmul peak (>= 0.5)": mlp["gflops"] / peaks["float32"],
        "peak RSS of fit, MB (< 3000)": max(r["peak_rss_mb"] for n, r in rows.items() if n.startswith("keras_vae")),
        "mlp nll_iw below reference mlp, nats (>= 2)": ref_mlp["nll_iw"] - mlp["nll_iw"],
    }


def table(report):
    header = (f"| model | samples/s | 1st epoch s | wall s | peak RSS MB | test ELBO | nll_iw (K={report['settings']['iw_samples']}) "
              "| IW samples/s | GFLOP/s | of peak |")
    lines = [header, "|" + "---|" * 10]
    for name, r in report["rows"].items():
        lines.append(f"| {name} | {r['samples_per_s']:.0f} | {r['first_epoch_s']:.1f} | {r['wall_s']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['test_elbo']:.2f} | {r['nll_iw']:.2f} | {r['iw_samples_per_s']:.0f} | "
                     f"{r['gflops']:.1f} | {r['fraction_of_peak']:.0%} |")
    return "\n".join(lines)


def write_report(report):
    suffix = "-quick" if report["quick"] else ""  # a --quick run never overwrites the full results
    with open(os.path.join(OUT_DIR, f"results{suffix}.json"), "w") as f:
        json.dump(report, f, indent=2)
    s = report["settings"]
    md = [
        "# keras_vae benchmark results", "",
        f"Machine: {report['cpu']}, {report['cores']} cores. Matmul peaks measured in the same run (2048×2048): "
        f"float32 {report['matmul_peak_gflops']['float32']:.0f} GFLOP/s, bfloat16 {report['matmul_peak_gflops']['bfloat16']:.0f} GFLOP/s.",
        "",
        f"Fashion-MNIST ({s['train_examples']} training images{', --quick subset' if report['quick'] else ''}), "
        f"{s['epochs']} epochs, batch {s['batch_size']}, seed {s['seed']}, latent 16, dynamic binarization for every model. "
        f"Test ELBO on the test split; nll_iw on its first {s['iw_examples']} images. samples/s is the steady state "
        "(epochs after the first); the first epoch includes tracing.",
        "", table(report), "", "Targets:", "",
    ]
    md += [f"- {name}: {value:.3f}" for name, value in report["targets"].items()]
    md += ["", f"Command: `python scripts/benchmark.py{' --quick' if report['quick'] else ''} --epochs {s['epochs']}`; "
           f"total {report['total_wall_s']:.0f} s.", ""]
    with open(os.path.join(OUT_DIR, f"RESULTS{suffix}.md"), "w") as f:
        f.write("\n".join(md))
    print(table(report))
    for name, value in report["targets"].items():
        print(f"{name}: {value:.3f}")


def replicas(args):
    base = dict(dataset="fashion_mnist", data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                architecture=args.architecture)
    rows = {
        "1 device": run_child("fit", {"config": dict(base, strategy="one"), "train_examples": 60000}),
        "2 CPU replicas (mirrored)": run_child("fit", {"config": dict(base, strategy="mirrored", cpu_replicas=2),
                                                      "train_examples": 60000}),
    }
    reference = rows["1 device"]["samples_per_s"]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.architecture}, batch {args.batch_size}, "
          f"{args.epochs} epochs of Fashion-MNIST")
    print(f"{'configuration':28s} {'samples/s':>10s} {'ratio':>6s} {'1st epoch s':>12s} {'val ELBO':>9s}")
    for name, row in rows.items():
        print(f"{name:28s} {row['samples_per_s']:10.0f} {row['samples_per_s'] / reference:6.2f} "
              f"{row['first_epoch_s']:12.1f} {row['val_elbo']:9.2f}")


def levers(args):
    """Throughput of fit options side by side, for choosing the defaults."""
    base = dict(dataset="fashion_mnist", data_dir=args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                architecture=args.architecture)
    variants = {
        "defaults": {},
        "steps_per_execution 8": {"steps_per_execution": 8},
        "jit_compile on": {"jit_compile": "on"},
        "mixed_bfloat16": {"precision": "mixed_bfloat16"},
        "mixed_bfloat16 + spe 8": {"precision": "mixed_bfloat16", "steps_per_execution": 8},
    }
    print(f"{args.architecture}, batch {args.batch_size}")
    for name, extra in variants.items():
        row = run_child("fit", {"config": dict(base, **extra), "train_examples": 60000})
        print(f"{name:28s} {row['samples_per_s']:8.0f} samples/s  first epoch {row['first_epoch_s']:5.1f}s  "
              f"val ELBO {row['val_elbo']:.2f}", flush=True)


def scale(args):
    """How training cost grows: samples/s and epoch time over dataset, batch, latent and image sizes."""
    import numpy as np

    from keras_vae.data.datasets import load_dataset

    fashion = load_dataset("fashion_mnist", args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        def subset(n):
            path = os.path.join(scratch, f"fashion_{n}.npz")
            np.savez(path, x=fashion.x_train[:n], x_test=fashion.x_test[:1000])
            return path

        base = dict(architecture=args.architecture, epochs=2, batch_size=128, latent_dim=16)
        points = [("dataset size", f"{n} images", dict(base, dataset=subset(n)), n) for n in (15000, 30000, 60000)]
        points += [("batch size", str(b), dict(base, dataset=subset(60000), batch_size=b), 60000) for b in (32, 128, 512)]
        points += [("latent size", str(l), dict(base, dataset=subset(60000), latent_dim=l), 60000) for l in (2, 64)]
        points += [("image size", name, dict(base, dataset=name), 20000) for name in ("sprites28", "sprites")]
        for axis, value, config, examples in points:
            row = run_child("fit", {"config": config, "train_examples": examples})
            rows.append({"axis": axis, "value": value, "samples_per_s": row["samples_per_s"],
                         "epoch_s": row["steady_epoch_s"]})
            print(f"{axis:13s} {value:14s} {row['samples_per_s']:8.0f} samples/s  {row['steady_epoch_s']:6.1f} s/epoch",
                  flush=True)
    return rows


def ab(args):
    """Interleaved A/B: reference vs keras_vae training throughput, alternating `--rounds` times.

    Single runs on a shared VM drift by up to ~1.8x over minutes; alternating the
    two and comparing the medians of their runs keeps that drift out of the ratio.
    """
    import statistics

    import numpy as np

    from keras_vae.data.datasets import load_dataset

    data = load_dataset("fashion_mnist", args.data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "subset.npz")
        np.savez(path, x=data.x_train[:args.quick_train * 2], x_test=data.x_test[:1000])
        common = dict(dataset=path, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, latent_dim=16)
        examples = args.quick_train * 2
        speeds = {"reference": [], "keras_vae": [], "keras_vae bf16": []}
        walls = {name: [] for name in speeds}  # whole process: start-up, data, training, everything
        for _ in range(args.rounds):
            children = [("reference", "reference_speed", {"design": args.architecture, "config": common})]
            for name, precision in (("keras_vae", "float32"), ("keras_vae bf16", "mixed_bfloat16")):
                config = dict(common, architecture=args.architecture, precision=precision)
                children.append((name, "fit", {"config": config, "train_examples": examples}))
            for name, kind, job in children:
                figures = run_child(kind, job)
                speeds[name].append(figures["samples_per_s"])
                walls[name].append(figures["wall_s"])
            print({k: [round(v) for v in vals] for k, vals in speeds.items()}, flush=True)
    medians = {k: statistics.median(v) for k, v in speeds.items()}
    wall = {k: statistics.median(v) for k, v in walls.items()}
    for name in ("keras_vae", "keras_vae bf16"):
        print(f"{args.architecture} {name}: {medians[name]:.0f} samples/s vs reference {medians['reference']:.0f}: "
              f"{medians[name] / medians['reference']:.2f}x; whole process {wall[name]:.1f} s vs "
              f"{wall['reference']:.1f} s: {wall['reference'] / wall[name]:.2f}x")
    return speeds


def quality(args):
    """Time to quality: the seconds `keras-vae fit --dataset fashion_mnist` with the package's defaults takes to
    reach each reference's final test ELBO, against the reference's own seconds for its `--epochs`.

    Seconds run from each process's start (imports, data, tracing and the run's own validation included; the
    per-epoch test scoring that draws the curves excluded). The package runs the same number of epochs; if it
    never reaches a reference's ELBO, that row says so."""
    from keras_vae.config import FitConfig

    data = {"dataset": "fashion_mnist", "data_dir": args.data_dir, "seed": args.seed, "epochs": args.epochs}
    fit_images = round(60000 * (1 - FitConfig().validation_split))  # what the defaults train on
    reference = dict(data, batch_size=args.batch_size, latent_dim=16)
    rows = {}
    for design in ("conv-small", "mlp"):
        print(f"... reference {design}", file=sys.stderr, flush=True)
        rows[f"reference {design}"] = run_child("reference_curve", {"design": design, "config": reference})
    print("... keras_vae defaults", file=sys.stderr, flush=True)
    rows["keras_vae defaults"] = run_child("package_curve", {"config": data, "train_examples": fit_images})
    package = rows["keras_vae defaults"]["curve"]
    lines = ["| reference | its final test ELBO | its seconds | keras_vae defaults reach it at | ratio |",
             "|---|---|---|---|---|"]
    for name in ("reference conv-small", "reference mlp"):
        seconds, elbo = rows[name]["curve"][-1]
        reached = time_to_reach(package, elbo)
        ratio = f"{seconds / reached:.2f}x" if reached else "not reached"
        lines.append(f"| {name} | {elbo:.2f} | {seconds:.1f} | "
                     f"{f'{reached:.1f} s' if reached else f'not in {args.epochs} epochs'} | {ratio} |")
    for name, row in rows.items():
        lines.append(f"\n{name}, (seconds, test ELBO) after each epoch: "
                     + ", ".join(f"({t:.0f}, {e:.2f})" for t, e in row["curve"]))
    print("\n".join(lines))
    with open(os.path.join(OUT_DIR, "quality.json"), "w") as f:
        json.dump({"cpu": cpu_model(), "settings": data, "rows": rows}, f, indent=1)
    return rows


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="compare", choices=["compare", "replicas", "levers", "scale", "ab",
                                                                           "quality"])
    parser.add_argument("--rounds", type=int, default=3, help="ab: alternations")
    parser.add_argument("--data-dir", default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--architecture", default="mlp", help="for replicas and levers")
    parser.add_argument("--iw-samples", type=int, default=None)
    parser.add_argument("--iw-examples", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a subset: finishes in under 3 minutes on 2 cores")
    parser.add_argument("--quick-train", type=int, default=8000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 3 if args.quick else (10 if args.mode in ("compare", "quality") else 3)
    args.iw_samples = args.iw_samples or (100 if args.quick else 1000)
    args.iw_examples = args.iw_examples or (200 if args.quick else 1000)
    {"compare": main_benchmark, "replicas": replicas, "levers": levers, "scale": scale, "ab": ab,
     "quality": quality}[args.mode](args)


if __name__ == "__main__":
    main()
