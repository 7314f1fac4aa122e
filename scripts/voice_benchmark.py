#!/usr/bin/env python3
"""Speech models on real recordings, and voice conversion judged by classifiers (figures, not tests).

    python scripts/voice_benchmark.py --data-dir ../shared/data/fsdd

Every row trains on the Free Spoken Digit Dataset's log-mel spectrograms
(`--dataset fsdd`, 2,700 training clips of 1.05 s, 128 frames × 64 mel bands,
padding masked out of the likelihood) with the same budget (`--epochs`,
batch 32):

- `vae`: the package's VAE through `--architecture conv1d` (a 32-d code);
- `vq_vae`: a row of 64 codes along time (one per 2 frames, 256 codes, EMA);
- `vq_vae_speaker`: the same with `--condition speaker`: the decoder reads a
  learned speaker embedding, so the codes need not carry the voice.

Each row reports the test split's ELBO and −log p(x) in nats per utterance
and bits per real value, training examples per second and the peak memory
(of the call that trained the row or of this one, whichever is larger). The judges are two classifiers (a small 1-D CNN over log-mel frames)
trained here on the real training recordings, one for the speaker and one for
the digit. They score, on the 300 test utterances: the originals; the
originals through Griffin-Lim (the vocoder's own cost); the model's
reconstructions; and conversions (codes of an utterance decoded with another
speaker, each of the five others in turn). A judged clip goes through
Griffin-Lim to a waveform and back to a spectrogram, as a listener hears it;
the decoder's spectrogram judged directly is reported too. A few converted
WAV files go to `benchmarks/voice/` (derived from FSDD: CC BY-SA 4.0).
Writes `benchmarks/voice.json` and prints the table of `benchmarks/VOICE.md`.
"""

import argparse
import json
import os
import sys
import tempfile

from benchmark_runs import cpu_model, peak_rss_gb, timed_fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VQ = dict(model="vq_vae", latent_dim=64, codebook_size=256, vq_ema=True)
ROWS = {  # row: (what it is, FitConfig values beyond the common ones)
    "vae": ("VAE, conv1d, 32-d code", dict(model="vae", latent_dim=32)),
    "vq_vae": ("VQ-VAE, 64 codes along time, K = 256", VQ),
    "vq_vae_speaker": ("VQ-VAE as above + speaker embedding in the decoder", dict(VQ, condition="speaker")),
}
EXAMPLES = (("3_theo_0", ("george", "yweweler")), ("7_jackson_2", ("lucas", "nicolas")))  # WAVs to keep


def config_for(row, args):
    from keras_vae.config import FitConfig

    values = dict(dataset="fsdd", data_dir=args.data_dir, architecture="conv1d", batch_size=32, epochs=args.epochs,
                  seed=0, export=False, run_dir=os.path.join(args.scratch, row))
    return FitConfig(**{**values, **ROWS[row][1]})


# ------------------------------------------------------------------ judges
def gain_normalized(x, mask):
    """Log-mel clips [N, T, F] less each clip's mean over its real frames, padding 0: what the judges read, so
    that loudness (which Griffin-Lim output, scaled into [-1, 1], does not keep) says nothing."""
    import numpy as np

    real = np.asarray(mask, np.float32)[..., None]
    mean = (x * real).sum(axis=(1, 2), keepdims=True) / (real.sum(axis=(1, 2), keepdims=True) * x.shape[2])
    return ((x - mean) * real).astype(np.float32)


def build_judge(shape, classes, normalizer):
    import keras

    return keras.Sequential([
        keras.Input(shape), normalizer,
        keras.layers.Conv1D(64, 5, padding="same", activation="relu"), keras.layers.MaxPooling1D(2),
        keras.layers.Conv1D(128, 5, padding="same", activation="relu"), keras.layers.MaxPooling1D(2),
        keras.layers.Conv1D(128, 3, padding="same", activation="relu"), keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dropout(0.3), keras.layers.Dense(classes)])


def train_judges(dataset, epochs=30, seed=0):
    """{"speaker": classifier, "digit": classifier} over log-mel clips [T, F], trained on the training split."""
    import keras

    keras.utils.set_random_seed(seed)
    x = gain_normalized(dataset.x_train, dataset.mask_train)
    normalizer = keras.layers.Normalization(axis=-1)
    normalizer.adapt(x)
    judges = {}
    for name in ("speaker", "digit"):
        labels = dataset.factors_train[:, dataset.factor_names.index(name)]
        judge = build_judge(x.shape[1:], int(labels.max()) + 1, normalizer)
        judge.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        judge.fit(x, labels, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
        judge.trainable = False
        judges[name] = judge
    return judges


def accuracy(judge, x, mask, labels):
    """The judge's accuracy on log-mel clips x [N, T, F] with padding masks [N, T]."""
    import numpy as np

    predicted = np.argmax(judge.predict(gain_normalized(x, mask), batch_size=100, verbose=0), axis=1)
    return float(np.mean(predicted == labels))


def as_heard(x, mask, audio):
    """Clips x [N, T, F] as a listener hears them: padding silenced, Griffin-Lim to waveforms cut to their real
    length, and the (log-mel clips, masks) of those."""
    from keras_vae.listen import GRIFFIN_LIM_ITERATIONS, real_samples, silence_padding

    waveforms = audio.to_waveforms(silence_padding(x, mask, audio), GRIFFIN_LIM_ITERATIONS)
    return audio.examples([w[:n] for w, n in zip(waveforms, real_samples(mask, audio))])


def judged(judges, x, mask, audio, speakers, digits):
    """{speaker_accuracy, digit_accuracy} of clips as heard, and of the spectrograms themselves."""
    heard = as_heard(x, mask, audio)
    return {"speaker_accuracy": accuracy(judges["speaker"], *heard, speakers),
            "digit_accuracy": accuracy(judges["digit"], *heard, digits),
            "speaker_accuracy_spectrogram": accuracy(judges["speaker"], x, mask, speakers),
            "digit_accuracy_spectrogram": accuracy(judges["digit"], x, mask, digits)}


def conversion_targets(speakers, count=6):
    """Each utterance's target: a speaker other than its own, the five others in turn."""
    import numpy as np

    return (speakers + 1 + np.arange(len(speakers)) % (count - 1)) % count


# ------------------------------------------------------------------- rows
def measure(row, args, dataset, judges):
    import numpy as np
    import tensorflow as tf

    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.listen import convert_examples
    from keras_vae.runs import load_run

    requested = config_for(row, args)
    times = timed_fit(requested)
    fit_epochs = times["epochs"]  # fewer than the run's when the timed call resumed a stopped run
    config, model = load_run(requested.run_dir)  # as trained: with the data's defaults
    test, train = load_split(config, "test", dataset), load_split(config, "train", dataset)
    speakers, digits = (test.labels(name) for name in ("speaker", "digit"))
    figures = evaluate_model(model, test, iw_samples=args.iw_samples, train_data=train, progress=False)
    steps = float(test.mask.sum(axis=1).mean())
    out = {"what": ROWS[row][0], "config": {k: v for k, v in config.to_dict().items()
                                            if k in ROWS[row][1] or k in ("epochs", "batch_size", "architecture")},
           "elbo_nats": figures["elbo"], "nll_iw_nats": figures["nll_iw"], "bits_per_dim": figures["bits_per_dim"],
           "iw_samples": args.iw_samples, "reconstruction_nats": figures["reconstruction_loss"],
           "real_values_per_utterance": steps * test.x.shape[2],
           "digit_probe": figures["linear_probe_accuracy"],
           "train_examples_per_second": len(train.x) * fit_epochs / times["fit"] if times.get("fit") and fit_epochs else None,
           "fit_seconds": times.get("fit"), "fit_epochs": fit_epochs, "peak_rss_mb": 1024 * peak_rss_gb(times)}
    labels = speakers if model.uses_labels else None
    rebuilt = np.asarray(model.reconstruct(tf.constant(test.x), None if labels is None else tf.constant(labels)))
    out["reconstructions"] = judged(judges, rebuilt, test.mask, dataset.audio, speakers, digits)
    if model.uses_labels:
        targets = conversion_targets(speakers)
        converted = convert_examples(model, test.x, targets)
        out["conversions"] = judged(judges, converted, test.mask, dataset.audio, targets, digits)
        out["conversions"]["still_source_speaker"] = accuracy(
            judges["speaker"], *as_heard(converted, test.mask, dataset.audio), speakers)
        write_examples(model, dataset, args.data_dir, os.path.join(REPO, "benchmarks", "voice"))
    return out


def write_examples(model, dataset, data_dir, folder):
    """`EXAMPLES`' originals and their conversions as small WAV files."""
    import numpy as np

    from keras_vae.data.recordings import read_mono
    from keras_vae.listen import convert_examples, label_value, write_clips

    os.makedirs(folder, exist_ok=True)
    for name, targets in EXAMPLES:
        waveform, _ = read_mono(os.path.join(data_dir, "recordings", f"{name}.wav"), dataset.audio.sample_rate)
        x, mask = dataset.audio.examples([waveform])
        write_clips(folder, [f"{name}_original"], x, dataset.audio, mask)
        for target in targets:
            converted = convert_examples(model, x, np.array([label_value(dataset, "speaker", target)]))
            write_clips(folder, [f"{name}_as_{target}"], converted, dataset.audio, mask)


def table(results):
    lines = ["| row | ELBO (nats/utt.) | −log p(x) | bits/value | train ex./s | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for row, r in results["rows"].items():
        lines.append(f"| {r['what']} | {-r['elbo_nats']:.1f} | {r['nll_iw_nats']:.1f} | {r['bits_per_dim']:.3f} | "
                     f"{r['train_examples_per_second'] or float('nan'):.0f} | {r['peak_rss_mb']:.0f} |")
    judges = results["judges"]
    lines += ["", "| judged clips (as heard: Griffin-Lim and back) | speaker | digit |", "|---|---|---|",
              f"| originals | {judges['originals']['speaker_accuracy']:.3f} | {judges['originals']['digit_accuracy']:.3f} |",
              f"| originals through Griffin-Lim | {judges['griffin_lim']['speaker_accuracy']:.3f} | "
              f"{judges['griffin_lim']['digit_accuracy']:.3f} |"]
    for row, r in results["rows"].items():
        for kind in ("reconstructions", "conversions"):
            if kind in r:
                target = " (target speaker)" if kind == "conversions" else ""
                lines.append(f"| {row}: {kind}{target} | {r[kind]['speaker_accuracy']:.3f} | "
                             f"{r[kind]['digit_accuracy']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "data", "fsdd"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--rows", default=",".join(ROWS), help="Comma-separated rows; '' prints the stored table.")
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "voice_benchmark"))
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "voice.json"))
    args = parser.parse_args(argv)
    stored = json.load(open(args.out)) if os.path.exists(args.out) else {"rows": {}}
    rows = [r for r in args.rows.split(",") if r]
    if rows:
        from keras_vae.data.datasets import load_dataset

        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            sys.exit(f"Unknown rows {unknown}; valid: {', '.join(ROWS)}.")
        dataset = load_dataset("fsdd", args.data_dir)
        judges = train_judges(dataset)
        speakers, digits = (dataset.factors_test[:, dataset.factor_names.index(n)] for n in ("speaker", "digit"))
        test = (dataset.x_test, dataset.mask_test)
        originals = {"speaker_accuracy": accuracy(judges["speaker"], *test, speakers),
                     "digit_accuracy": accuracy(judges["digit"], *test, digits)}
        heard = as_heard(*test, dataset.audio)
        stored["judges"] = {"originals": originals, "griffin_lim": {
            "speaker_accuracy": accuracy(judges["speaker"], *heard, speakers),
            "digit_accuracy": accuracy(judges["digit"], *heard, digits)}}
        for row in rows:
            stored["rows"][row] = measure(row, args, dataset, judges)
            stored.update(machine=cpu_model(), epochs=args.epochs)
            with open(args.out, "w") as f:
                json.dump(stored, f, indent=1)
    print(table(stored))


if __name__ == "__main__":
    main()
