"""An nvae run with and without a contrastive prior over its top groups, side by side.

    python scripts/contrastive_prior_benchmark.py RUN --scratch DIR [--top-groups K] [--epochs 20]
        [--iw-samples 1000] [--test-images 500] [--out FILE.json] [--grids DIR]

Copies the finished nvae run RUN into DIR (RUN's model is left as it is), gives the copy a contrastive prior
(`keras_vae.code_prior.fit_contrastive_prior`, what `keras-vae fit-prior --method contrastive` runs; timed),
and measures both models the way `scripts/nvae_benchmark.py` does: the test ELBO (whole test split, one
sample), −log p(x) by importance sampling (K `--iw-samples`, the first `--test-images` test images, kept in
each run as `nll_iw-K<K>.json`, RUN included), and on sprites the judge's scores of 1,000 samples (seed 0, T = 1) with a
grid of 64 (`--grids`: contrastive-RUN-base.png, contrastive-RUN-contrastive.png). Prints a Markdown
table; `--out` keeps the figures.
"""

import argparse
import functools
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_runs import chunked_evaluation, file_fingerprint  # noqa: E402
from reproduce import machine  # noqa: E402

GRID = 64


def measure(run_dir, iw_samples, test_images, grid_path=None):
    """{test_elbo, nll_iw, nll_iw_stderr, test_images, judge (sprites)} of the finished run in `run_dir`."""
    import numpy as np

    from keras_vae import judge
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.images import make_grid, save_png
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    test = load_split(config, "test")
    figures = {"test_elbo": evaluate_model(model, test, iw_samples=1, progress=False)["elbo"]}
    head = chunked_evaluation(model, test, min(test_images, len(test.x)), iw_samples,
                              os.path.join(run_dir, f"nll_iw-K{iw_samples}.json"),
                              file_fingerprint(os.path.join(run_dir, "model.keras")))
    figures.update(nll_iw=head["nll_iw"], nll_iw_stderr=head["nll_iw_stderr"], test_images=head["num_examples"],
                   iw_samples=iw_samples)
    if config.dataset == "sprites":
        started = time.time()
        samples = np.asarray(model.sample(1000, seed=0)[0])
        figures["sample_seconds"] = time.time() - started
        figures["judge"] = judge.sample_scores(judge.load_judge(), samples)
        if grid_path:
            os.makedirs(os.path.dirname(grid_path) or ".", exist_ok=True)
            save_png(grid_path, make_grid(samples[:GRID], columns=8))
    return figures


def table(report):
    lines = ["| prior of the top groups | test ELBO | −log p(x), nats | 1,000 samples: confident | "
             "square / ellipse / heart |", "|---|---|---|---|---|"]
    for name in ("base", "contrastive"):
        row = report[name]
        judged = row.get("judge")
        shares = "–" if not judged else " / ".join(f"{100 * judged[s]:.0f}" for s in ("square", "ellipse", "heart")) + "%"
        confident = "–" if not judged else f"{100 * judged['confident']:.1f}%"
        lines.append(f"| {name} | {row['test_elbo']:.2f} | {row['nll_iw']:.2f} ± {row['nll_iw_stderr']:.2f} "
                     f"(K {row['iw_samples']}, {row['test_images']}) | {confident} | {shares} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished nvae run")
    parser.add_argument("--scratch", required=True, help="where the copy with the contrastive prior goes")
    parser.add_argument("--top-groups", type=int, help="the top groups reweighted (default: fit-prior's)")
    parser.add_argument("--epochs", type=int, default=20, help="the classifier's epochs")
    parser.add_argument("--iw-samples", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--out", help="a JSON file for the figures")
    parser.add_argument("--grids", help="a folder for the two sample grids")
    args = parser.parse_args(argv)
    from keras_vae.code_prior import fit_contrastive_prior

    name = os.path.basename(os.path.normpath(args.run))
    copy = os.path.join(args.scratch, f"{name}-contrastive")
    if os.path.exists(copy):
        shutil.rmtree(copy)
    shutil.copytree(args.run, copy)  # keeps the files' times: the base model's cached scores stay valid
    started = time.time()
    fitted = fit_contrastive_prior(copy, args.top_groups, args.epochs, export=False,
                                   log=functools.partial(print, flush=True))
    fit_seconds = time.time() - started
    grid = (lambda kind: os.path.join(args.grids, f"contrastive-{name}-{kind}.png") if args.grids else None)
    report = {"run": name, "machine": machine(), "fit_seconds": fit_seconds,
              "fit": {k: v for k, v in fitted.items() if k not in ("export_path", "replicas")},
              "base": measure(args.run, args.iw_samples, args.test_images, grid("base")),
              "contrastive": measure(copy, args.iw_samples, args.test_images, grid("contrastive"))}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    print(f"{name}: the top {fitted['groups']} groups ({fitted['dimensions']} dimensions) reweighted in "
          f"{fit_seconds / 60:.1f} min; held-out codes {fitted['held_out_gain']:+.2f} nats over the trained prior")
    print(table(report))


if __name__ == "__main__":
    sys.exit(main())
