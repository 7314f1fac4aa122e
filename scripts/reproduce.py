#!/usr/bin/env python3
"""The reproduction table: the literature's likelihood models, trained by `keras-vae fit`, beside the papers'
figures (figures, not tests).

    python scripts/reproduce.py --data-dir ../shared/data/fashion_mnist
    python scripts/reproduce.py --configs vae-gated,vampprior-gated --iw-samples 5000 --test-images 1000

Each row is a config file in `benchmarks/reproduce/` that `keras-vae fit --config FILE --data-dir DIR` reads
the same way, so any row can be run alone. A run is trained once in `--scratch` and reused; it is then
scored by `keras_vae.evaluate.evaluate_model`, each −log p(x) with its standard error over the images: on the
whole test split with `--whole-iw-samples` importance samples (1,000; the ELBO too), and with the papers'
K = 5,000 on the first `--test-images` (1,000) images. On Fashion-MNIST the per-image spread is about 75
nats, so 1,000 images leave a standard error of about 2.4 nats, and the whole split about 0.75.

The papers train for thousands of epochs (2,000 in the VampPrior setting); the budgets here are the config
files' epochs, on Fashion-MNIST (`--dataset mnist` runs the rows on MNIST where its files are at hand; they
are not on this machine), so each row states its budget and the wall time it took, and the papers' figures
are given for each dataset they report. Writes `benchmarks/reproduction.json` and prints the Markdown table
of `benchmarks/REPRODUCTION.md`.
"""

import argparse
import glob
import json
import os
import sys
import tempfile
import time

from benchmark_runs import cpu_model, timed_fit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "benchmarks", "reproduce")

# {config: (what it reproduces, [(dataset, the paper's test −log p(x) in nats)])}. All with K = 5000. The
# gated-MLP rows (2 × 300 gated units, 40-d latents, Adam 5e-4, 2,000 epochs in the papers) are the density-
# estimation table of Norouzi et al. (2020), as its authors publish it in their repository (sajadn/Exemplar-VAE),
# which trains the VampPrior paper's models. Burda et al.'s Table 1 figures are quoted from memory: the paper's
# table could not be opened on this machine, so they are marked as unchecked.
PAPERS = {
    "vae-gated": ("VAE, Gaussian prior (Tomczak & Welling 2018 setting; figures of Norouzi et al. 2020)",
                  [("Fashion-MNIST", 228.70), ("MNIST", 84.45)]),
    "vampprior-gated": ("VAE + VampPrior, 500 pseudo-inputs (same source)", [("Fashion-MNIST", 227.35),
                                                                               ("MNIST", 82.43)]),
    "hvae-gated": ("two stochastic layers, Gaussian prior (same source; LVAE inference here)",
                   [("Fashion-MNIST", 227.37), ("MNIST", 82.39)]),
    "vae-200-tanh": ("VAE, 2 × 200 tanh, 50-d (Burda et al. 2016, Table 1, k = 1; unchecked)", [("MNIST", 86.76)]),
    "iwae-k50-200-tanh": ("IWAE k = 50, same networks (Burda et al. 2016, Table 1; unchecked)", [("MNIST", 84.78)]),
    "nvae-fashion": ("NVAE, 2 scales × 2 groups of 20-channel maps, 32 channels: the preset (12 epochs: 50 min on a 2-core EPYC VM; Vahdat & "
                     "Kautz 2020 report MNIST at 400 epochs on GPUs; the aim here is Fashion-MNIST below Exemplar "
                     "VAE's 226.75)", [("MNIST", 78.01)]),
}


def config_names():
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(CONFIGS, "*.json")))


def load_config(name, data_dir, run_dir, dataset=None):
    """The row's FitConfig, as `keras-vae fit --config` builds it, with the machine's folders (and another
    dataset, e.g. `mnist` where its files are at hand)."""
    from keras_vae.config import FitConfig, read_json_object

    path = os.path.join(CONFIGS, f"{name}.json")
    values = dict(read_json_object(path), data_dir=data_dir, run_dir=run_dir, export=False)
    values["dataset"] = dataset or values["dataset"]
    return FitConfig.from_dict(values, source=f"Config file {path}")


def measure(name, args):
    from keras_vae.data.splits import load_split
    from keras_vae.evaluate import evaluate_model
    from keras_vae.runs import load_run

    config = load_config(name, args.data_dir, None, args.dataset)
    config = config.replace(run_dir=os.path.join(args.scratch, f"{config.dataset}-{name}"))
    times = timed_fit(config)  # a finished run of the same configuration is reused
    config, model = load_run(config.run_dir)
    test = load_split(config, "test")
    start = time.time()
    whole = evaluate_model(model, test, iw_samples=args.whole_iw_samples, progress=False)
    head = evaluate_model(model, test.head(args.test_images), iw_samples=args.iw_samples, progress=False)
    return {"config": name, "settings": config.to_dict(), "fit_seconds": times.get("fit"),
            "score_seconds": time.time() - start, "test_elbo": whole["elbo"], "test_kl": whole["kl"],
            "active_units": whole["active_units"],
            "nll_iw_whole": whole["nll_iw"], "nll_iw_whole_stderr": whole["nll_iw_stderr"],
            "whole_iw_samples": args.whole_iw_samples, "test_images_whole": whole["num_examples"],
            "nll_iw": head["nll_iw"], "nll_iw_stderr": head["nll_iw_stderr"], "iw_samples": args.iw_samples,
            "test_images": head["num_examples"]}


def paper_text(name):
    what, figures = PAPERS.get(name, (name, []))
    return what, "; ".join(f"{dataset} {nats:.2f}" for dataset, nats in figures) or "–"


def table(reports):
    lines = ["| config | reproduces | paper −log p(x), nats | data here | epochs | fit min | test ELBO "
             "| −log p(x), whole test split | −log p(x), first images, K 5000 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        what, paper = paper_text(r["config"])
        fit = "–" if r["fit_seconds"] is None else f"{r['fit_seconds'] / 60:.1f}"
        lines.append(f"| `{r['config']}` | {what} | {paper} | {r['settings']['dataset']} | {r['settings']['epochs']} "
                     f"| {fit} | {r['test_elbo']:.2f} | {r['nll_iw_whole']:.2f} ± {r['nll_iw_whole_stderr']:.2f} "
                     f"(K {r['whole_iw_samples']}, {r['test_images_whole']}) | {r['nll_iw']:.2f} ± "
                     f"{r['nll_iw_stderr']:.2f} (K {r['iw_samples']}, {r['test_images']}) |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(name for name in config_names() if name in PAPERS),
                        help="the rows (default: those with a paper's figure; the sprites presets are "
                             "scripts/nvae_benchmark.py's)")
    parser.add_argument("--data-dir", default=os.path.join(REPO, "..", "shared", "data", "fashion_mnist"))
    parser.add_argument("--dataset", help="Another dataset than the configs' (e.g. mnist, with its --data-dir).")
    parser.add_argument("--whole-iw-samples", type=int, default=1000,
                        help="K of the −log p(x) estimate on the whole test split (and its ELBO).")
    parser.add_argument("--iw-samples", type=int, default=5000, help="K of the papers' −log p(x) estimate...")
    parser.add_argument("--test-images", type=int, default=1000, help="...taken on the first N test images.")
    parser.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "reproduce"))
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "reproduction.json"))
    args = parser.parse_args(argv)
    reports = {}
    if os.path.exists(args.out):  # a row measured again replaces itself; the others are kept
        with open(args.out) as f:
            reports = {row_key(r): r for r in json.load(f)["rows"]}
    for name in args.configs.split(","):
        report = measure(name, args)
        reports[row_key(report)] = report
        with open(args.out, "w") as f:  # after each row, so that a long run keeps what it measured
            json.dump({"machine": machine(), "rows": sorted(reports.values(), key=row_key)}, f, indent=1)
    print(table(sorted(reports.values(), key=row_key)))


def row_key(report):
    return report["settings"]["dataset"], report["config"]


def machine():
    return f"{cpu_model()}, {os.cpu_count()} cores"


if __name__ == "__main__":
    sys.exit(main())
