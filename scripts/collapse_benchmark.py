#!/usr/bin/env python3
"""Posterior collapse and its remedies, side by side (figures, not tests).

    python scripts/collapse_benchmark.py --data-dir ../shared/data/fashion_mnist

Every row trains on dynamically binarized Fashion-MNIST with the same budget
(`--epochs`, the `mlp` encoder, a 32-d code, batch 100) and the PixelCNN
decoder (`--decoder pixelcnn`, `--decoder-layers 4 --decoder-filters 16`),
except the first, the package's plain factorized `mlp` VAE that the decoder
must beat. Each row is then scored on the first `--test-images` test images:
−log p(x) with `--iw-samples` importance samples, KL, I(x; z) under the
aggregate posterior, active units, the linear probe (fit on 5,000 training
images), and samples per second (64 at a time, one tf.function, after a
warm-up call). Each row also keeps its curves per epoch: the training KL,
and the validation I(x; z) and active units that TensorBoard shows. Sample
grids go to `benchmarks/collapse/<row>.png`. Writes
`benchmarks/collapse.json` and prints the Markdown table of
`benchmarks/COLLAPSE.md`.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from benchmark_runs import cpu_model, timed_fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIXELCNN = dict(decoder="pixelcnn", decoder_layers=4, decoder_filters=16, kl_warmup_steps=0)
ROWS = {  # row: (what it is, FitConfig values beyond the common ones)
    "factorized": ("plain VAE, factorized `mlp` decoder (package defaults: warm-up over half the run)", {}),
    "pixelcnn": ("PixelCNN decoder, no remedy", PIXELCNN),
    "warm-up": ("+ KL warm-up over half the run", dict(PIXELCNN, kl_warmup_steps=None)),
    "free-bits": ("+ free bits, 0.25 nats a dimension", dict(PIXELCNN, free_bits=0.25)),
    "dropout": ("+ decoder dropout 0.5 of earlier pixels", dict(PIXELCNN, decoder_dropout=0.5)),
    "delta": ("δ-VAE, δ = 16 nats", dict(PIXELCNN, model="delta_vae", delta=16.0)),
    "aggressive": ("+ aggressive encoder (He et al. 2019)", dict(PIXELCNN, aggressive_encoder=True)),
    "combined": ("δ-VAE δ = 16 + warm-up + dropout 0.5",
                 dict(PIXELCNN, model="delta_vae", delta=16.0, kl_warmup_steps=None, decoder_dropout=0.5)),
}
SAMPLES = 64


def config_for(row, args):
    from keras_vae.config import FitConfig

    values = dict(dataset="fashion_mnist", data_dir=args.data_dir, architecture="mlp", latent_dim=32, batch_size=100,
                  epochs=args.epochs, seed=0, export=False, run_dir=os.path.join(args.scratch, row))
    return FitConfig(**{**values, **ROWS[row][1]})


def samples_per_second(model, seed=0):
    import tensorflow as tf

    draw = tf.function(lambda seed: model.sample(SAMPLES, seed=seed)[0])
    draw(tf.constant(seed))  # trace and warm up
    start = time.time()
    images = draw(tf.constant(seed + 1))
    return SAMPLES / (time.time() - start), images.numpy()


def measure(row, args):
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.images import make_grid, save_png
    from keras_vae.runs import load_run

    config = config_for(row, args)
    times = timed_fit(config)
    config, model = load_run(config.run_dir)
    test, train = load_split(config, "test").head(args.test_images), load_split(config, "train").head(5000)
    start = time.time()
    result = evaluate_model(model, test, iw_samples=args.iw_samples, train_data=train, progress=False)
    rate, images = samples_per_second(model)
    save_png(os.path.join(os.path.dirname(args.out), "collapse", f"{row}.png"), make_grid(images, columns=8))
    settings = dict(config.to_dict(), run_dir=f"<scratch>/{row}")
    return {"row": row, "what": ROWS[row][0], "machine": f"{cpu_model()}, {os.cpu_count()} cores",
            "settings": settings, "fit_seconds": times.get("fit"),
            "score_seconds": time.time() - start, "samples_per_second": rate, "curves": curves(config.run_dir),
            **{key: result[key] for key in ("nll_iw", "nll_iw_stderr", "elbo", "kl", "mutual_information",
                                            "active_units", "linear_probe_accuracy", "num_examples", "iw_samples")}}


def curves(run_dir):
    """{name: [value per epoch]}: `kl` and, where the run had them, `aggressive`, `decoder_steps` and
    `encoder_only_steps` from its history; `mutual_information` and `active_units` from its TensorBoard
    validation log."""
    import tensorflow as tf

    from keras_vae.runs import LOG_DIR

    with open(os.path.join(run_dir, "history.json")) as f:
        history = json.load(f)
    out = {name: history[name] for name in ("kl", "val_kl", "aggressive", "decoder_steps", "encoder_only_steps")
           if name in history}
    tags = {}
    for path in tf.io.gfile.glob(os.path.join(run_dir, LOG_DIR, "validation", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag in ("mutual_information", "active_units"):
                    tags.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    out.update({tag: [steps[k] for k in sorted(steps)] for tag, steps in tags.items()})
    return out


def table(reports):
    lines = ["| row | what | test −log p(x), nats | KL | I(x; z) | active units | probe | samples/s | fit min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| `{r['row']}` | {r['what']} | {r['nll_iw']:.2f} ± {r['nll_iw_stderr']:.2f} | {r['kl']:.2f} "
                     f"| {r['mutual_information']:.2f} | {r['active_units']} | {r['linear_probe_accuracy']:.3f} "
                     f"| {r['samples_per_second']:.1f} | {(r['fit_seconds'] or 0) / 60:.1f} |")
    return "\n".join(lines)


def curves_table(reports):
    """Per epoch, for the rows that kept curves: training KL, then validation I(x; z) and active units."""
    lines = ["| row | KL by epoch | I(x; z) by epoch | active units by epoch |", "|---|---|---|---|"]
    for r in reports:
        c = r.get("curves") or {}
        if c:
            cells = [" → ".join(f"{v:.2f}" for v in c.get(name, [])) for name in ("kl", "mutual_information")]
            units = " → ".join(str(int(v)) for v in c.get("active_units", []))
            lines.append(f"| `{r['row']}` | {cells[0]} | {cells[1]} | {units} |")
    return "\n".join(lines)


def stripes_curves(epochs=10):
    """The test suite's collapse case as curves: 8×8 images whose rows are each all on or all off (8 bits a
    picture), a 6-layer PixelCNN decoder, a 4-d code; no remedy against decoder dropout 0.9. Returns
    {run: {kl, mutual_information, active_units: [per epoch]}}, seconds to compute."""
    import keras
    import numpy as np

    from keras_vae.callbacks import posterior_statistics
    from keras_vae.models.vae import VAE

    rng = np.random.default_rng(0)
    rows = np.broadcast_to(rng.random((1000, 8, 1, 1)) < 0.5, (1000, 8, 8, 1))
    x = np.where(rng.random(rows.shape) < 0.02, ~rows, rows).astype(np.float32)
    out = {}
    for run, dropout in (("no remedy", 0.0), ("decoder dropout 0.9", 0.9)):
        keras.utils.set_random_seed(0)
        model = VAE(image_shape=(8, 8, 1), latent_dim=4, decoder="pixelcnn", decoder_layers=6, decoder_filters=16,
                    kl_warmup_steps=0, decoder_dropout=dropout)
        model.compile(optimizer=keras.optimizers.Adam(2e-3))
        curves = {"kl": [], "mutual_information": [], "active_units": []}
        record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: [
            curves["kl"].append(float(logs["kl"])),
            *(curves[k].append(float(v)) for k, v in posterior_statistics(model, x).items())])
        model.fit(x, batch_size=100, epochs=epochs, verbose=0, callbacks=[record])
        out[run] = curves
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="the rows to measure (none: print the tables)")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "data", "fashion_mnist"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "collapse"))
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "collapse.json"))
    parser.add_argument("--stripes", action="store_true", help="only print the curves of the test suite's "
                        "collapse case (seconds)")
    args = parser.parse_args(argv)
    if args.stripes:
        for run, curves in stripes_curves().items():
            print(f"{run}: " + "; ".join(f"{name} " + " ".join(f"{v:.2f}" for v in values)
                                        for name, values in curves.items()))
        return
    reports = {}
    if os.path.exists(args.out):  # a row measured again replaces itself; the others are kept
        with open(args.out) as f:
            reports = {r["row"]: r for r in json.load(f)["rows"]}
    for row in filter(None, args.rows.split(",")):
        reports[row] = measure(row, args)
        with open(args.out, "w") as f:
            json.dump({"epochs": args.epochs,
                       "rows": [reports[name] for name in ROWS if name in reports]}, f, indent=1)
    print(table([reports[name] for name in ROWS if name in reports]))
    print()
    print(curves_table([reports[name] for name in ROWS if name in reports]))


if __name__ == "__main__":
    sys.exit(main())
