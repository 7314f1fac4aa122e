"""Training-step speed of the float32-bias-gradient convolutions against Keras's own biased ones.

The package's conv architectures add each convolution's bias in a `BiasAdd` layer whose gradient
is summed in float32 (the fix for bfloat16 bias gradients off by up to 93%). This measures what
that costs: the conv-small VAE's train step with the package's layers and with the same network
built from Keras's Conv2D/Conv2DTranspose with their own bias, interleaved round by round in one
process, under float32 and mixed_bfloat16.

    python scripts/precision_benchmark.py [--rounds 5] [--steps 30] [--batch-size 128]

`policies` measures instead what `--precision auto` (mixed_bfloat16 on a CPU with AVX512-BF16 or AMX)
buys each kind of model the package trains by default: the train step of the default `mlp` (with and
without XLA, which its default turns on), `sprites`' `broadcast-64` VAE and the two NVAE presets, float32
against mixed_bfloat16, interleaved round by round on one fixed batch:

    python scripts/precision_benchmark.py policies [--rounds 3] [--steps 15] [--batch-size N]

(each case at its own batch size, the one `fit` would use, unless `--batch-size` is given). On a GPU, the
issue's figure (the NVAE presets' images per second in float32 and mixed precision) is

    python scripts/precision_benchmark.py policies --cases nvae --precisions float32,mixed_float16,mixed_bfloat16
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_vae import networks  # noqa: E402
from keras_vae.data.defaults import DATASET_DEFAULTS  # noqa: E402
from keras_vae.models.vae import VAE  # noqa: E402
from keras_vae.train import dtype_policy  # noqa: E402
from reproduce import load_config  # noqa: E402


def keras_biased_conv_small(image_shape, latent_dim, num_params):
    """conv-small as it was: Keras's convolutions with their own bias."""
    height, width, channels = image_shape
    conv = dict(activation="relu", padding="same")
    encoder = keras.Sequential([
        keras.Input(image_shape), keras.layers.Conv2D(32, 3, strides=2, **conv),
        keras.layers.Conv2D(64, 3, strides=2, **conv), keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"), keras.layers.Dense(num_params)], name="encoder")
    decoder = keras.Sequential([
        keras.Input((latent_dim,)), keras.layers.Dense(height // 4 * width // 4 * 64, activation="relu"),
        keras.layers.Reshape((height // 4, width // 4, 64)),
        keras.layers.Conv2DTranspose(64, 3, strides=2, **conv), keras.layers.Conv2DTranspose(32, 3, strides=2, **conv),
        keras.layers.Conv2DTranspose(channels, 3, padding="same")], name="decoder")
    return encoder, decoder


class KerasBiasVAE(VAE):
    def build_networks(self):
        return keras_biased_conv_small(self.image_shape, self.latent_dim, self.encoder_outputs())


def step_time(cls, precision, x, steps):
    """Seconds per training step (after two warm-up calls)."""
    with dtype_policy(precision):
        model = cls((28, 28, 1), latent_dim=16, architecture="conv-small", kl_warmup_steps=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    return timed_steps(model, x, steps, warmup=2)


def timed_steps(model, x, steps, warmup):
    """Seconds per call of a compiled model's train function on batch `x`, after `warmup` calls."""
    model.make_train_function()
    data = iter([(x,)] * (steps + warmup))
    for _ in range(warmup):
        model.train_function(data)
    started = time.perf_counter()
    for _ in range(steps):
        model.train_function(data)
    return (time.perf_counter() - started) / steps


POLICY_CASES = {  # name: (FitConfig values, or a preset of benchmarks/reproduce by name; image shape; --jit-compile)
    "mlp (the default), XLA": ({}, (28, 28, 1), "on"),
    "mlp, no XLA": ({}, (28, 28, 1), "off"),
    "broadcast-64 (sprites' default)": (DATASET_DEFAULTS["sprites"], (64, 64, 1), "off"),
    "nvae-fashion preset": ("nvae-fashion", (32, 32, 1), "off"),  # Fashion-MNIST, padded to 32x32 as the NVAE does
    "nvae-sprites preset": ("nvae-sprites", (64, 64, 1), "off"),
}


def compiled_case(config, image_shape):
    """(model, batch): `config`'s model built and compiled as `fit` does it for images of `image_shape`, and one
    fixed binary batch of its batch size."""
    from types import SimpleNamespace

    import tensorflow as tf

    from keras_vae.train import build_compiled_model

    data = SimpleNamespace(image_shape=image_shape, num_classes=0)  # what the model is built for
    model = build_compiled_model(config, data, tf.distribute.get_strategy(), total_steps=10_000)
    x = (np.random.default_rng(0).random((config.batch_size,) + tuple(image_shape)) < 0.3).astype(np.float32)
    return model, x


def policy_step_time(values, image_shape, jit, precision, steps, batch_size=None):
    """Seconds per training step of a case's model under `precision`, built and compiled as `fit` does it
    (after three warm-up calls), and the batch size (the case's own unless `batch_size` is given)."""
    from keras_vae.config import FitConfig

    config = load_config(values, None, None) if isinstance(values, str) else FitConfig.from_dict(values)
    config = config.replace(precision=precision, jit_compile=jit, batch_size=batch_size or config.batch_size)
    model, x = compiled_case(config, image_shape)
    return timed_steps(model, x, steps, warmup=3), config.batch_size


def policies(rounds, steps, batch_size=None, precisions=("float32", "mixed_bfloat16"), cases=None):
    """Each case's train step under each of `precisions`, interleaved round by round, printed against the
    first precision's speed. `cases`: parts of the names of the POLICY_CASES to run ("nvae": both presets;
    default all)."""
    chosen = {name: POLICY_CASES[name] for name in policy_cases(cases)}
    print(f"train step, {' against '.join(precisions)}, median of {rounds} interleaved rounds of {steps} steps")
    for name, (values, image_shape, jit) in chosen.items():
        times = {precision: [] for precision in precisions}
        for _ in range(rounds):
            for precision, values_ in times.items():
                seconds, batch = policy_step_time(values, image_shape, jit, precision, steps, batch_size)
                values_.append(seconds)
        medians = {precision: statistics.median(values_) for precision, values_ in times.items()}
        first = medians[precisions[0]]
        print(f"{name:34s} batch {batch:3d}: " + ", ".join(
            f"{precision} {1000 * median:6.1f} ms ({batch / median:5.0f} images/s, {first / median:.2f}x)"
            for precision, median in medians.items()), flush=True)


def policy_cases(parts):
    """The POLICY_CASES whose names hold any of `parts`, in the table's order; all for None."""
    if parts is None:
        return list(POLICY_CASES)
    missing = [part for part in parts if not any(part in name for name in POLICY_CASES)]
    if missing:
        raise SystemExit(f"--cases: {', '.join(map(repr, missing))} is part of none of the cases' names: "
                         f"{'; '.join(POLICY_CASES)}.")
    return [name for name in POLICY_CASES if any(part in name for part in parts)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="bias", choices=["bias", "policies"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int,
                        help="the batch size (bias: default 128; policies: default each case's own)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help="policies: the dtype policies, comma-separated, each against the first (on a GPU: "
                             "float32,mixed_float16,mixed_bfloat16)")
    parser.add_argument("--cases", help="policies: run the cases whose names hold any of these comma-separated parts (default all: "
                                        + "; ".join(POLICY_CASES) + ")")
    args = parser.parse_args()
    if args.mode == "policies":
        return policies(args.rounds, args.steps, args.batch_size, tuple(args.precisions.split(",")),
                        None if args.cases is None else args.cases.split(","))
    args.batch_size = args.batch_size or 128
    x = (np.random.default_rng(0).random((args.batch_size, 28, 28, 1)) < 0.3).astype(np.float32)
    print(f"conv-small train step, batch {args.batch_size}, median of {args.rounds} interleaved rounds "
          f"of {args.steps} steps")
    for precision in ("float32", "mixed_bfloat16"):
        times = {"Keras bias": [], "float32-gradient bias": []}
        for _ in range(args.rounds):
            times["Keras bias"].append(step_time(KerasBiasVAE, precision, x, args.steps))
            times["float32-gradient bias"].append(step_time(VAE, precision, x, args.steps))
        medians = {name: statistics.median(values) for name, values in times.items()}
        ratio = medians["Keras bias"] / medians["float32-gradient bias"]
        print(f"{precision:15s} Keras bias {1000 * medians['Keras bias']:.1f} ms/step, float32-gradient bias "
              f"{1000 * medians['float32-gradient bias']:.1f} ms/step: speed ratio {ratio:.2f}x")


if __name__ == "__main__":
    assert networks.BiasAdd  # the package's layers are the ones measured
    main()
