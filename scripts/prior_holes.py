"""Prior holes or a weak decoder? A hierarchy's top groups drawn from priors fitted to their aggregate posterior.

    python scripts/prior_holes.py RUN [--keep 2] [--train-images 20000] [--out FILE.json] [--grids DIR]

A hierarchical sprites run (`nvae`, `hvae`) whose images decoded with the top `--keep` groups of real images
kept and the groups below drawn from their priors (`keras-vae resample`, judged by `judge.resample_scores`)
show shapes that its samples lack leaves two explanations: the prior of the top groups puts its mass where
no posterior does (prior holes: Rosca et al. 2018; for NVAE, Aneja et al. 2021), or the codes that make
shapes are ones no simple density finds. This script replaces the prior of those groups' whitened code ε
(whose own prior is N(0, I)) by densities fitted after training to the aggregate posterior of training
images (ex-post density estimation, Ghosh et al. 2020), draws the groups below from their own priors given
each draw, and has the sprites judge read 1,000 samples of each:

    prior              N(0, I): the model's own samples
    gaussian           one full-covariance Gaussian
    mixture-K          a diagonal Gaussian mixture of K components (EM, `priors.fit_mixture`)
    aggregate          the aggregate posterior, each training posterior widened by the bandwidth under which
                       held-out codes are likeliest (`priors.aggregate_posterior_mixture`)
    training-draws     the aggregate posterior unwidened: one draw from a random training image's posterior
    training-means     a random training image's posterior means (`resample`'s row, on training images)

The densities are fitted on the active dimensions of the top groups (posterior-mean variance above
`metrics.ACTIVE_THRESHOLD`); the other dimensions are drawn from N(0, 1), which their posteriors match. Each
row also reports the mean log-density (nats, over the active dimensions) of held-out codes (one posterior
draw per test image): how much better than N(0, I) the fitted density describes codes it was not fitted to.
"""

import argparse
import json
import os
import sys

import numpy as np

MIXTURE_COMPONENTS = (10, 100)
SAMPLES = 1000
GRID = 64  # samples per saved grid


def gaussian_fit(points):
    """The maximum-likelihood full-covariance Gaussian of `points` [N, D]: (mean [D], covariance [D, D])."""
    points = np.asarray(points, np.float64)
    return points.mean(0), np.cov(points, rowvar=False, bias=True)


def gaussian_log_density(points, mean, covariance):
    """log N(x; mean, covariance) per row of `points` [N, D]."""
    cholesky = np.linalg.cholesky(covariance)
    whitened = np.linalg.solve(cholesky, (np.asarray(points, np.float64) - mean).T)
    return (-0.5 * np.sum(whitened**2, 0) - np.sum(np.log(np.diag(cholesky)))
            - 0.5 * len(mean) * np.log(2 * np.pi))


def standard_normal_log_density(points):
    """log N(x; 0, I) per row of `points` [N, D]."""
    points = np.asarray(points, np.float64)
    return -0.5 * np.sum(points**2, 1) - 0.5 * points.shape[1] * np.log(2 * np.pi)


def mixture_draws(rng, logits, loc, scale, num):
    """`num` draws [num, D] from the diagonal mixture Σ_k softmax(logits)_k N(loc_k, diag(scale_k²))."""
    weights = np.exp(logits - np.max(logits))
    components = rng.choice(len(loc), num, p=weights / weights.sum())
    return loc[components] + scale[components] * rng.standard_normal((num, loc.shape[1]))


def fitted_priors(train_loc, train_scale, held_out, rng, num=SAMPLES):
    """{name: (draws [num, D], held-out mean log-density or None)} for the densities the module names, fitted
    to the training posteriors N(train_loc, train_scale²) [N, D] of the active dimensions; `held_out` [M, D]
    are codes of other images."""
    from keras_vae import priors

    train_draws = train_loc + train_scale * rng.standard_normal(train_loc.shape)
    rows = {"prior": (rng.standard_normal((num, train_loc.shape[1])),
                      float(np.mean(standard_normal_log_density(held_out))))}
    mean, covariance = gaussian_fit(train_draws)
    rows["gaussian"] = (rng.multivariate_normal(mean, covariance, num),
                        float(np.mean(gaussian_log_density(held_out, mean, covariance))))
    for k in MIXTURE_COMPONENTS:
        start = train_draws[rng.choice(len(train_draws), k, replace=False)]
        logits, loc, scale, curve = priors.fit_mixture(train_draws, np.zeros(k), start,
                                                       np.tile(train_draws.std(0), (k, 1)), held_out=held_out)
        rows[f"mixture-{k}"] = (mixture_draws(rng, logits, loc, scale, num), curve[-1])
    logits, loc, scale, scores = priors.aggregate_posterior_mixture(train_loc, train_scale, held_out)
    rows["aggregate"] = (mixture_draws(rng, logits, loc, scale, num), max(scores.values()))
    zeros = np.zeros(len(train_loc))
    rows["training-draws"] = (mixture_draws(rng, zeros, train_loc, train_scale, num),
                              priors.mean_log_likelihood(held_out, zeros, train_loc, train_scale))
    rows["training-means"] = (train_loc[rng.integers(0, len(train_loc), num)], None)
    return rows


def top_mask(model, keep):
    """Booleans over the whitened code: True on the first `keep` groups of `model.generation_order()`."""
    from keras_vae.explore import group_mask

    order = model.generation_order()
    if order is None or not 0 < keep < len(order):
        raise SystemExit(f"--keep must name 1 to {len(order or [1, 1]) - 1} top groups of a hierarchical run "
                         f"(nvae, hvae); received {keep} for a {type(model).__name__}.")
    return group_mask([size for _, size in model.code_groups()], set(order[:keep]))


def decode_with(model, top, columns, rng, batch_size=500):
    """Images of codes whose `columns` (booleans over the code) are `top` [N, D] and whose other dimensions
    are drawn from N(0, 1): the groups below drawn from their priors given the top ones."""
    codes = rng.standard_normal((len(top), len(columns))).astype(np.float32)
    codes[:, columns] = top
    return np.concatenate([np.asarray(model.decode(codes[s: s + batch_size]))
                           for s in range(0, len(codes), batch_size)])


def measure(run_dir, keep, train_images, grids=None, seed=0):
    from keras_vae import judge, metrics
    from keras_vae.codes import posterior_parameters
    from keras_vae.data.splits import load_split
    from keras_vae.images import make_grid, save_png
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    if config.dataset != "sprites":
        raise SystemExit(f"The sprites judge reads sprites; {run_dir} was trained on {config.dataset}.")
    top = top_mask(model, keep)
    train_loc, train_scale = posterior_parameters(model, load_split(config, "train").head(train_images))
    test_loc, test_scale = posterior_parameters(model, load_split(config, "test").head(train_images // 10))
    active = top & (train_loc.var(0) > metrics.ACTIVE_THRESHOLD)
    rng = np.random.default_rng(seed)
    held_out = (test_loc + test_scale * rng.standard_normal(test_loc.shape))[:, active]
    sprites_judge = judge.load_judge()
    rows = {}
    for name, (draws, log_density) in fitted_priors(train_loc[:, active], train_scale[:, active], held_out,
                                                    rng).items():
        images = decode_with(model, draws, active, rng)
        rows[name] = dict(judge.sample_scores(sprites_judge, images), held_out_log_density=log_density)
        if grids:
            os.makedirs(grids, exist_ok=True)
            save_png(os.path.join(grids, f"{os.path.basename(os.path.normpath(run_dir))}-keep{keep}-{name}.png"),
                     make_grid(images[:GRID], columns=8))
        print(name, json.dumps(rows[name]), flush=True)
    return {"run": os.path.basename(os.path.normpath(run_dir)), "keep": keep, "train_images": train_images,
            "top_dimensions": int(top.sum()), "active_dimensions": int(active.sum()), "rows": rows}


def table(report):
    lines = ["| prior of the top groups | held-out log-density, nats | confident | square / ellipse / heart |",
             "|---|---|---|---|"]
    for name, row in report["rows"].items():
        density = "–" if row["held_out_log_density"] is None else f"{row['held_out_log_density']:.2f}"
        shares = " / ".join(f"{100 * row[s]:.0f}" for s in ("square", "ellipse", "heart"))
        lines.append(f"| {name} | {density} | {100 * row['confident']:.1f}% | {shares}% |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished nvae or hvae run on sprites")
    parser.add_argument("--keep", type=int, default=2, help="the top groups whose prior is replaced")
    parser.add_argument("--train-images", type=int, default=20000,
                        help="training images whose posteriors are fitted (a tenth as many test images judge them)")
    parser.add_argument("--out", help="a JSON file for the figures")
    parser.add_argument("--grids", help="a folder for a grid of 64 samples per prior")
    args = parser.parse_args(argv)
    report = measure(args.run, args.keep, args.train_images, args.grids)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    print(f"{report['run']}: top {args.keep} groups, {report['active_dimensions']} of {report['top_dimensions']} "
          "dimensions active")
    print(table(report))


if __name__ == "__main__":
    sys.exit(main())
