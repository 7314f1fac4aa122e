#!/usr/bin/env python3
"""What a new user's first run makes, judged (figures, not tests): issue 19's targets.

    python scripts/first_run.py                     # the default `keras-vae fit`, trained and judged
    python scripts/first_run.py --before            # ... and, first, the declared defaults it replaced
    python scripts/first_run.py --flags "--epochs 3" # extra fit flags for every row
    python scripts/first_run.py --refit-prior       # each row also judged after `keras-vae fit-prior` (EM refit)
    python scripts/first_run.py score RUN_DIR ...   # judge runs that exist

Each row trains `keras-vae fit` in a fresh process (so the wall time is a
user's), then scores the run on the test split of `sprites`:
  - test ELBO and the linear probe's shape accuracy on the codes, and MIG
    (`keras_vae.evaluate`, K importance samples);
  - the sample judge (`keras_vae.judge`): the fraction of 1,000 samples it
    classifies confidently, each shape's share of them, and the factor
    agreement of the test split's reconstructions (shape, scale within 1,
    position within 2 steps), with the judge's own agreement on real images.
Writes `benchmarks/first_run.json` and prints a Markdown table and the targets.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declared_defaults_flags():
    """Flags that put back the declared defaults of every setting `sprites` has its own default for:
    the first run as it was before the data's defaults existed."""
    from keras_vae.config import general_declarations
    from keras_vae.data.defaults import DATASET_DEFAULTS

    declared = general_declarations()
    return " ".join(f"{declared[name].flag} {declared[name].default}" for name in DATASET_DEFAULTS["sprites"])

TARGETS = (
    ("confident samples", lambda r: r["samples"]["confident"], ">=", 0.80),
    ("least common shape", lambda r: min(r["samples"][s] or 0 for s in ("square", "ellipse", "heart")), ">=", 0.20),
    ("most common shape", lambda r: max(r["samples"][s] or 1 for s in ("square", "ellipse", "heart")), "<=", 0.45),
    ("shape in reconstructions", lambda r: r["reconstructions"]["shape"], ">=", 0.95),
    ("probe accuracy", lambda r: r["linear_probe_accuracy"], ">=", 0.90),
    ("test ELBO", lambda r: r["elbo"], ">", -116.0),
)


def score(run_dir, num_samples=1000, iw_samples=100):
    """The judged figures of one run directory (the run and its data loaded once)."""
    from keras_vae import judge
    from keras_vae.data.datasets import dataset_of
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    dataset = dataset_of(config)
    data, train_data = load_split(config, "test", dataset), load_split(config, "train", dataset)
    evaluation = evaluate_model(model, data, iw_samples, train_data=train_data, progress=False)
    critic = judge.load_judge()
    return {
        "run_dir": run_dir, "config": {k: config.to_dict()[k] for k in ("architecture", "latent_dim", "epochs")},
        "elbo": evaluation["elbo"], "nll_iw": evaluation["nll_iw"], "iw_samples": iw_samples,
        "linear_probe_accuracy": evaluation["linear_probe_accuracy"], "mig": evaluation["mig"],
        "active_units": evaluation["active_units"],
        **judge.model_scores(critic, model, data, num_samples),
        "judge_on_real": judge.judge_accuracy(critic),
    }


def train(flags, run_dir):
    """`keras-vae fit` in a fresh process; its wall seconds."""
    command = [sys.executable, "-m", "keras_vae.cli", "fit", "--run-dir", run_dir, "--no-export", *flags]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    return time.perf_counter() - start


def refit(run_dir):
    """A copy of the run (in a new temporary folder) with its mixture prior refitted by `keras-vae fit-prior`
    in a fresh process: (the copy, the wall seconds of fit-prior); (None, None) for a run without a mixture
    prior, which fit-prior does not refit."""
    with open(os.path.join(run_dir, "config.json")) as f:
        if json.load(f).get("prior") != "mog":
            return None, None
    copy = os.path.join(tempfile.mkdtemp(prefix="first-run-refit-"), "run")
    shutil.copytree(run_dir, copy)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "keras_vae.cli", "fit-prior", copy, "--no-export"], check=True, cwd=REPO)
    return copy, time.perf_counter() - start


def row(report):
    s, r = report["samples"], report["reconstructions"]
    shares = "/".join(f"{s[k]:.2f}" if s[k] is not None else "-" for k in ("square", "ellipse", "heart"))
    return (f"| {report['label']} | {report.get('wall_s', float('nan')):.0f} | {report['elbo']:.2f} | "
            f"{report['linear_probe_accuracy']:.3f} | {report['mig']:.3f} | {s['confident']:.3f} | {shares} | "
            f"{r['shape']:.3f} | {r['scale']:.3f} | {r['position']:.3f} |")


def print_table(reports):
    print("| run | wall s | test ELBO | probe | MIG | confident samples | square/ellipse/heart | "
          "recon shape | recon scale | recon position |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for report in reports:
        print(row(report))
    real = reports[-1]["judge_on_real"]
    print(f"\nJudge on 2,000 fresh real sprites: confident {real['confident']:.3f}, shape {real['shape']:.3f}, "
          f"scale ±1 {real['scale']:.3f}, position ±2 {real['position']:.3f}.")
    for report in reports:
        checks = []
        for name, value, op, bound in TARGETS:
            got = value(report)
            ok = got >= bound if op == ">=" else got <= bound if op == "<=" else got > bound
            checks.append(f"{name} {got:.3f} {op} {bound} {'PASS' if ok else 'FAIL'}")
        print(f"\n{report['label']}: " + "; ".join(checks))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="`score RUN_DIR ...`: judge existing runs instead of training")
    parser.add_argument("--before", action="store_true", help="also train the old defaults, first")
    parser.add_argument("--flags", default="", help="extra fit flags for every trained row")
    parser.add_argument("--refit-prior", action="store_true",
                        help="also judge each run with a mixture prior after `keras-vae fit-prior` refits it "
                             "(in a copy)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "first_run.json"))
    args = parser.parse_args(argv)
    reports = []
    if args.runs:
        if args.runs[0] != "score":
            parser.error("positional arguments must be: score RUN_DIR ...")
        for run in args.runs[1:]:
            reports.append(dict(score(run), label=run))
            copy, seconds = refit(run) if args.refit_prior else (None, None)
            if copy:
                reports.append(dict(score(copy), label=f"{run} + fit-prior ({seconds:.0f} s)"))
    else:
        scratch = tempfile.mkdtemp(prefix="first-run-")
        old = declared_defaults_flags()
        rows = ([(f"declared defaults ({old})", old)] if args.before else []) + [("sprites defaults", "")]
        for label, flags in rows:
            run_dir = os.path.join(scratch, str(len(reports)))
            flags = shlex.split(flags) + shlex.split(args.flags)
            wall = train(flags, run_dir)
            label += " " + args.flags if args.flags else ""
            reports.append(dict(score(run_dir), label=label, wall_s=wall))
            copy, seconds = refit(run_dir) if args.refit_prior else (None, None)
            if copy:
                reports.append(dict(score(copy), label=label + " + fit-prior", wall_s=wall + seconds))
    print_table(reports)
    with open(args.out, "w") as f:
        json.dump(reports, f, indent=1)


if __name__ == "__main__":
    main()
