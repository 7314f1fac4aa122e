#!/usr/bin/env python3
"""Discrete-code models side by side (figures, not tests): issue 14's targets.

    python scripts/vq_benchmark.py                         # every preset (about 2.5 hours on 2 CPU cores)
    python scripts/vq_benchmark.py --presets vq_vae2-8bit,vq_vae-8bit    # one pair (about 45 minutes)
    python scripts/vq_benchmark.py --presets vq_vae2,vq_vae --epochs 5 --prior-epochs 8
    python scripts/vq_benchmark.py --sampling-only         # sampling time against the grid size

Each preset trains with the package's own `fit` (its defaults unless the preset
says otherwise: Fashion-MNIST, dynamic binarization, Bernoulli likelihood;
`--precision auto`; the `-8bit` rows: grey levels under the discretized
logistic mixture; the `-sprites` rows: 64×64 sprites; a finished run in the
scratch folder is reused, with the seconds it took), fits its PixelCNN priors
with `fit_prior` where the row needs the bound, and is measured on the test
split:
  - `rec_nats`: −log p(x | codes) on the fixed binarization of the test split;
  - `psnr`: of the decoder mean against the binarized test image it reconstructs (dB), and `psnr_grey`
    against the grey original (a code that carries the binarization noise scores lower there);
  - `bound`: −ELBO = rec_nats − log p(codes) under the fitted priors, an upper bound on −log p(x);
  - `usage`: the share of each level's K codes that the test split's code maps use;
  - `bits`: the code's size, Σ_levels h·w·log2 K;
  - fit, prior and sampling seconds (sampling: per image, top-then-bottom raster loops, 64 at a time).
Writes `benchmarks/vq.json`, sample and reconstruction grids to `benchmarks/vq/`, and prints a Markdown table.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time

from benchmark_runs import timed_fit, write_times

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = os.path.join(os.path.dirname(REPO), "shared", "data", "fashion_mnist")

# Equal code sizes: 80 positions of 9 bits (512 codes) in each row. The priors, the costly part, are fitted
# where the row's question needs the bound; the others answer codebook usage and reconstruction.
PRESETS = {
    "vq_vae2": (dict(model="vq_vae2", prior_layers=6), True),
    "vq_vae2-no-restart": (dict(model="vq_vae2", codebook_restart=False), False),
    "vq_vae2-fsq": (dict(model="vq_vae2", quantizer="fsq", fsq_levels="8,8,8"), False),
    "vq_vae": (dict(model="vq_vae", latent_dim=80, architecture="conv", vq_ema=True), True),
}
# The same pair on the 8-bit grey images under a discretized logistic mixture (the VQ-VAE-2 paper's setting):
# binarization noise is not there for local codes to spend their bits on.
EIGHT_BIT = dict(likelihood="logistic_mixture", binarize="none")
PRESETS.update({f"{name}-8bit": (dict(PRESETS[name][0], **EIGHT_BIT), True) for name in ("vq_vae2", "vq_vae")})
# 64×64 sprites: 320 positions of 9 bits per row (top 8×8 and bottom 16×16 against a 16×20 map), 5 epochs of
# the 20,000 training images, priors of 6 gated layers (the bottom maps have 256 positions).
SPRITES = dict(dataset="sprites", data_dir=None, epochs=5)
PRESETS.update({
    "vq_vae2-sprites": (dict(model="vq_vae2", channels=64, prior_layers=6, **SPRITES), True),
    "vq_vae-sprites": (dict(model="vq_vae", latent_dim=320, architecture="conv-64", vq_ema=True, prior_layers=6,
                            **SPRITES), True),
})


def measure(name, settings, priors, args, out_dir):
    import numpy as np
    import tensorflow as tf

    from keras_vae import explore
    from keras_vae.code_prior import code_maps, fit_prior
    from keras_vae.config import FitConfig
    from keras_vae.data.datasets import dataset_of
    from keras_vae.data.pipeline import to_unit_float
    from keras_vae.data.splits import load_split, train_and_held_out
    from keras_vae.evaluate import evaluate_model
    from keras_vae.images import save_png
    from keras_vae.runs import load_run

    run_dir = os.path.join(args.scratch, name)
    settings = {"dataset": args.dataset, "data_dir": args.data_dir, "epochs": args.epochs, **settings}
    config = FitConfig(precision="auto", run_dir=run_dir, export=False, **settings)
    times = timed_fit(config)  # a finished run of the same configuration is reused
    prior_history = None
    if priors:
        history_path = os.path.join(run_dir, "prior_history.json")
        if os.path.exists(history_path) and "prior" in times:
            prior_history = json.load(open(history_path))
        else:
            start = time.time()
            prior_history = fit_prior(run_dir, epochs=args.prior_epochs, export=False, verbose=2)["history"]
            times["prior"] = time.time() - start
    write_times(run_dir, times)
    config, model = load_run(run_dir)
    dataset = dataset_of(config)
    test = load_split(config, "test", dataset)
    result = evaluate_model(model, test, iw_samples=1, progress=False)
    grey = to_unit_float(train_and_held_out(config, dataset)[1][0])
    means = np.concatenate([model.reconstruct(tf.constant(test.x[i : i + 500])).numpy()
                            for i in range(0, len(test.x), 500)])
    def psnr(target):
        return float(np.mean(10 * np.log10(1.0 / np.maximum(np.mean((means - target) ** 2, axis=(1, 2, 3)), 1e-10))))

    codes = code_maps(model, test)
    sample_seconds = None
    if priors:
        sample = tf.function(lambda seed: model.sample(64, seed=seed)[0])
        sample(tf.constant(0))  # traced once
        start = time.time()
        sample(tf.constant(1)).numpy()
        sample_seconds = (time.time() - start) / 64
        save_png(os.path.join(out_dir, f"{name}-samples.png"), explore.sample_grid(model, 100, seed=3))
    save_png(os.path.join(out_dir, f"{name}-reconstructions.png"), explore.reconstruction_grid(model, test.x[:20]))
    return {
        "preset": name, "settings": settings, "epochs": settings["epochs"], "prior_epochs": args.prior_epochs,
        "rec_nats": result["reconstruction_loss"], "psnr": psnr(test.x), "psnr_grey": psnr(grey),
        "prior_nats": result["kl"] if priors else None, "bound": -result["elbo"] if priors else None,
        "bits_per_dim": -result["elbo"] / (math.prod(model.image_shape) * math.log(2)) if priors else None,
        "usage": {level or "map": len(np.unique(maps)) / model.num_codes for level, maps in codes.items()},
        "grids": {level or "map": list(grid) for level, grid in model.grids.items()},
        "bits": sum(math.prod(g) for g in model.grids.values()) * math.log2(model.num_codes),
        "fit_seconds": times.get("fit"), "prior_seconds": times.get("prior"), "prior_history": prior_history,
        "sample_seconds_per_image": sample_seconds,
    }


def sampling_by_grid(sizes=(4, 8, 16), num=16, filters=64, layers=6, codes=512):
    """Seconds per image of one PixelCNN's raster loop (untrained weights: the cost does not depend on them)."""
    import tensorflow as tf

    from keras_vae import pixelcnn

    rows = []
    for size in sizes:
        network = pixelcnn.build_pixelcnn((size, size), codes, filters, layers)
        draw = tf.function(lambda seed: pixelcnn.sample_codes(network, num, (size, size), seed))
        draw(tf.constant([0, 0]))
        start = time.time()
        draw(tf.constant([1, 0])).numpy()
        rows.append({"grid": f"{size}x{size}", "positions": size * size,
                     "seconds_per_image": (time.time() - start) / num})
    return rows


def print_table(reports, grids):
    print("| preset | code bits | rec. nats | PSNR dB (grey) | prior nats | bound −ELBO (bits/dim) | codebook usage | fit s "
          "| prior s | sample s/img |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def shown(value, form):
        return "–" if value is None else format(value, form)

    def bits_per_dim(r):
        return f" ({r['bits_per_dim']:.3f})" if r.get("bits_per_dim") and "binarize" in r["settings"] else ""

    for r in reports:
        usage = ", ".join(f"{k} {v:.0%}" for k, v in r["usage"].items())
        print(f"| {r['preset']} | {r['bits']:.0f} | {r['rec_nats']:.2f} | {r['psnr']:.2f} ({r['psnr_grey']:.2f}) | {shown(r['prior_nats'], '.2f')} | "
              f"{shown(r['bound'], '.2f')}{bits_per_dim(r)} | {usage} | {shown(r['fit_seconds'], '.0f')} | "
              f"{shown(r['prior_seconds'], '.0f')} | {shown(r['sample_seconds_per_image'], '.4f')} |")
    if grids:
        print("\n| grid | positions | sampling s per image |\n|---|---|---|")
        for g in grids:
            print(f"| {g['grid']} | {g['positions']} | {g['seconds_per_image']:.4f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--prior-epochs", type=int, default=3)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-dir", default=FASHION)
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "vq_benchmark"))
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "vq.json"))
    parser.add_argument("--sampling-only", action="store_true")
    args = parser.parse_args(argv)
    out_dir = os.path.join(os.path.dirname(args.out), "vq")
    os.makedirs(out_dir, exist_ok=True)
    # Rows of presets not run this time are kept; a rerun preset's new row goes last.
    reports = json.load(open(args.out))["presets"] if os.path.exists(args.out) else []
    if not args.sampling_only:
        for name in args.presets.split(","):
            report = measure(name, *PRESETS[name], args, out_dir)
            reports = [r for r in reports if r["preset"] != name] + [report]
            with open(args.out, "w") as f:  # after each preset, so that a long run keeps what it measured
                json.dump({"presets": reports}, f, indent=1)
    grids = sampling_by_grid()
    with open(args.out, "w") as f:
        json.dump({"presets": reports, "sampling_by_grid": grids}, f, indent=1)
    print_table(reports, grids)


if __name__ == "__main__":
    sys.exit(main())
