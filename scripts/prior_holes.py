"""Prior holes, measured: an NVAE's top groups drawn from priors fitted to their aggregate posterior.

    python scripts/prior_holes.py RUN [--keep 2] [--train-images 20000] [--out FILE.json] [--grids DIR]
                                      [--rows ROW ...] [--diffusion-steps N]

When an `nvae` run on sprites decodes clear shapes from the top `--keep` groups of real images with the
groups below drawn from their priors (`keras-vae resample`, judged by `judge.resample_scores`), but its
samples lack them, either the prior of the top groups puts its mass where no posterior does (prior holes:
Rosca et al. 2018; for NVAE, Aneja et al. 2021), which a density fitted to the codes after training fills
(ex-post density estimation, Ghosh et al. 2020), or the top groups do not hold the shape by themselves, and
even draws from their aggregate posterior, the best prior they could have for the ELBO, lose it. This script
replaces the prior of those groups' whitened code ε (whose own prior is N(0, I)) by such densities, draws
the groups below from their own priors given each draw, and has the sprites judge read 1,000 samples of each:

    prior              N(0, I): the model's own samples
    prior-T0.7         N(0, 0.7² I): what a lower temperature alone does to the top groups
    gaussian           one full-covariance Gaussian
    mixture-K          a diagonal Gaussian mixture of K components (EM, `priors.fit_mixture`)
    aggregate          the aggregate posterior as a kernel density: each fitted image's posterior (`encode`'s
                       means and spreads) widened by the bandwidth under which held-out codes are likeliest
                       (`priors.aggregate_posterior_mixture`; one component per image, so its memory and
                       time grow with --train-images: leave it out past some tens of thousands)
    training-draws     the aggregate posterior itself: one ancestral draw from a random fitted image's
                       posterior (`NVAE.whitened_posterior_sample`), the prior that maximizes the ELBO for the
                       trained encoder and decoder
    training-means     a random fitted image's posterior means (`resample`'s row, on those images)
    made               an autoregressive density (MADE with Gaussian-mixture conditionals, `code_densities`)
    diffusion          a denoising diffusion model (DDPM, `code_densities`): LSGM's kind of prior, fitted after
                       training; draws only
    noisy-draws-S      `training-draws` with the active dimensions mixed with noise, √(1 − S²)·ε + S·n,
                       n ~ N(0, I), for S in NOISE_LEVELS: how far from the aggregate posterior a draw may
                       land and keep its shape

The densities are fitted to one posterior draw per fitted image (the training images, and with
`--train-images` past them rendered ones), on the active dimensions of the top groups (posterior-mean
variance above `metrics.ACTIVE_THRESHOLD`); their draws take N(0, 1) in the other dimensions, and the report
gives the mean and standard deviation of the fitted images' draws there, which should be near 0 and 1 (the
training rows keep a fitted image's whole top code). Each row also reports the mean log-density (nats, over
the active dimensions) of held-out codes
(one posterior draw per test image): how much better than N(0, I) the density describes codes it was not
fitted to. Half of the test images' codes decide when EM stops, which epoch of the MADE is kept and which
bandwidth the aggregate takes; the log-density is reported on the other half.

`--train-images` beyond the training split's 20,000 adds sprites rendered afresh (sprites has 737,280 factor
combinations; the rendered ones leave out those of the held-out test images, though the dataset's own
training split shares a few with its test split): their codes are draws of the same aggregate posterior, so
the densities see more of it than the training images show.
"""

import argparse
import json
import os
import sys

import numpy as np

MIXTURE_COMPONENTS = (10, 100)
NOISE_LEVELS = (0.3, 0.5)
ROWS = ("prior", "prior-T0.7", "gaussian", *(f"mixture-{k}" for k in MIXTURE_COMPONENTS), "aggregate",
        "training-draws", "training-means", "made", "diffusion", *(f"noisy-draws-{s}" for s in NOISE_LEVELS))
SAMPLES = 1000
GRID = 64  # samples per saved grid
ENCODE_CHUNK = 20000  # images encoded at a time: only the top groups' columns are kept
RENDER_SEED = 1000  # + the run's seed: the rendered images' factors, apart from the dataset's own
RENDER_BLOCK = 10000  # factor combinations drawn at a time, so that fewer images are a prefix of more


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


def row_rng(seed, name, stream=0):
    """The generator of row `name`'s draws (stream 0) or decoding (stream 1): its own for each row, so a row
    measured alone (`--rows`) draws what it draws among all of them."""
    return np.random.default_rng([seed, ROWS.index(name), stream])


def fitted_priors(train_draws, train_loc, train_scale, active, tuning, held_out, seed, num=SAMPLES, names=ROWS,
                  diffusion_steps=None, diffusion_levels=None):
    """{name: (draws [num, T], held-out mean log-density or None)} for the priors `names` of the module's list,
    over the top groups' T dimensions. The densities are fitted on the `active` ones (booleans [T]) to
    `train_draws` [N, T] (one posterior draw per training image) or, for the aggregate, to the training
    posteriors N(train_loc, train_scale²), and their draws take N(0, 1) elsewhere; the training rows draw whole
    rows of `train_draws` or `train_loc`, and the noisy rows such rows of `train_draws` whose active part is
    mixed with noise, √(1 − S²)·ε + S·n. `tuning` [M, D] codes of other images (active dimensions only) stop EM
    and the MADE's fit and choose the bandwidth; the log-densities are the means over `held_out` [M', D] codes
    of yet other images. Each row draws from `row_rng(seed, name)`. `diffusion_steps` and `diffusion_levels`:
    the diffusion model's training steps and noise levels T (default `code_densities`')."""
    import code_densities
    from keras_vae import priors

    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        raise SystemExit(f"Unknown rows {unknown}; the rows are {', '.join(ROWS)}.")
    points, dim = train_draws[:, active], int(active.sum())
    mean_log_density = (lambda logits, loc, scale: priors.mean_log_likelihood(held_out, logits, loc, scale))
    schedule = code_densities.cosine_schedule(diffusion_levels or code_densities.DIFFUSION_STEPS)

    def mixture_row(rng, logits, loc, scale):
        return mixture_draws(rng, logits, loc, scale, num), mean_log_density(logits, loc, scale)

    def mixture_fit(rng, k):
        start = points[rng.choice(len(points), k, replace=False)]
        return mixture_row(rng, *priors.fit_mixture(points, np.zeros(k), start, np.tile(points.std(0), (k, 1)),
                                                    held_out=tuning)[:3])

    fitted = {
        "prior": lambda rng: (rng.standard_normal((num, dim)), float(np.mean(standard_normal_log_density(held_out)))),
        "prior-T0.7": lambda rng: (0.7 * rng.standard_normal((num, dim)),
                                   mean_log_density([0.0], np.zeros((1, dim)), np.full((1, dim), 0.7))),
        "gaussian": lambda rng: gaussian_row(points, held_out, rng, num),
        **{f"mixture-{k}": (lambda rng, k=k: mixture_fit(rng, k)) for k in MIXTURE_COMPONENTS},
        "aggregate": lambda rng: mixture_row(rng, *priors.aggregate_posterior_mixture(
            train_loc[:, active], train_scale[:, active], tuning)[:3]),
        "made": lambda rng: made_row(points, tuning, held_out, seed, num),
        "diffusion": lambda rng: (code_densities.diffusion_draws(
            denoiser(points, seed, diffusion_steps, schedule), num, dim, seed, schedule,
            clip=1.1 * np.abs(points).max()), None),
    }
    rows = {}
    for name in names:
        rng = row_rng(seed, name)
        if name in fitted:
            draws, log_density = fitted[name](rng)
            whole = rng.standard_normal((num, len(active)))
            whole[:, active] = draws
            rows[name] = (whole, log_density)
        elif name == "training-draws":
            rows[name] = (train_draws[rng.integers(0, len(train_draws), num)], None)
        elif name == "training-means":
            rows[name] = (train_loc[rng.integers(0, len(train_loc), num)], None)
        else:  # noisy-draws-S
            noise = float(name.rsplit("-", 1)[1])
            whole = train_draws[rng.integers(0, len(train_draws), num)].copy()
            whole[:, active] = np.sqrt(1 - noise**2) * whole[:, active] + noise * rng.standard_normal((num, dim))
            rows[name] = (whole, None)
    return rows


def gaussian_row(points, held_out, rng, num):
    """Draws of the maximum-likelihood Gaussian of `points` and its mean log-density of `held_out`."""
    mean, covariance = gaussian_fit(points)
    return (rng.multivariate_normal(mean, covariance, num),
            float(np.mean(gaussian_log_density(held_out, mean, covariance))))


def made_row(points, tuning, held_out, seed, num):
    """Draws of a MADE fitted to `points` (its epoch chosen on `tuning`) and its mean log-density of `held_out`."""
    import code_densities

    params, _ = code_densities.fit_made(points, tuning, seed)
    return (code_densities.made_draws(params, num, points.shape[1], seed),
            float(np.mean(code_densities.made_log_density(params, held_out))))


def denoiser(points, seed, train_steps=None, schedule=None):
    """`denoise(x, t)` of a diffusion model fitted to `points` (`code_densities.fit_diffusion`)."""
    import code_densities

    kwargs = {} if train_steps is None else {"train_steps": train_steps}
    network, _ = code_densities.fit_diffusion(points, seed, schedule=schedule,
                                              log=lambda line: print(line, flush=True), **kwargs)
    return lambda x, t: network([x, t])


def top_mask(model, keep):
    """Booleans over the whitened code: True on the first `keep` groups of `model.generation_order()`."""
    from keras_vae.explore import group_mask

    if not hasattr(model, "whitened_posterior_sample"):
        raise SystemExit(f"prior_holes reads the top groups of an nvae run; this run holds a "
                         f"{type(model).__name__}.")
    order = model.generation_order()
    if not 0 < keep < len(order):
        raise SystemExit(f"--keep must name 1 to {len(order) - 1} top groups of this {len(order)}-group run; "
                         f"received {keep}.")
    return group_mask([size for _, size in model.code_groups()], set(order[:keep]))


def decode_with(model, top, columns, rng, batch_size=500):
    """Images of codes whose `columns` (booleans over the code) are `top` [N, D] and whose other dimensions
    are drawn from N(0, 1): the groups below drawn from their priors given the top ones."""
    codes = rng.standard_normal((len(top), len(columns))).astype(np.float32)
    codes[:, columns] = top
    return np.concatenate([np.asarray(model.decode(codes[s: s + batch_size]))
                           for s in range(0, len(codes), batch_size)])


def rendered_factors(count, held_out, seed, block=RENDER_BLOCK):
    """`count` factor combinations [count, 5] drawn uniformly (`sprites.sample_factors`) in blocks of `block`,
    block i with the seed [seed, i], none of them in the set `held_out` of tuples: the first n of them are the
    same for any count ≥ n."""
    from keras_vae.data import sprites

    blocks, kept = [], 0
    while kept < count:
        factors = sprites.sample_factors(block, [seed, len(blocks)])
        blocks.append(factors[[tuple(f) not in held_out for f in factors]])
        kept += len(blocks[-1])
    return np.concatenate(blocks or [np.zeros((0, 5), np.int32)])[:count]


def fitted_images(config, count, test_factors, chunk=ENCODE_CHUNK):
    """The images whose codes the densities are fitted to, as Splits of at most `chunk`: the first `count` of
    a sprites run's training split and, past its end, sprites rendered afresh (`rendered_factors` at
    RENDER_SEED + the run's seed) whose factor combinations are none of `test_factors` [M, 5]."""
    from keras_vae.data import pipeline, sprites
    from keras_vae.data.splits import Split, fixed_binarization, load_split

    train = load_split(config, "train").head(count)
    for start in range(0, len(train.x), chunk):
        yield train.rows(start, start + chunk)
    held_out = {tuple(f) for f in np.asarray(test_factors)}
    factors = rendered_factors(count - len(train.x), held_out, RENDER_SEED + config.seed)
    for start in range(0, len(factors), chunk):
        part = factors[start: start + chunk]
        images = pipeline.to_unit_float(fixed_binarization(config, sprites.render(part, train.x.shape[1])))
        yield Split("rendered", images, part[:, 0], part, None, train.factor_names)


def measure(run_dir, keep, train_images, grids=None, seed=0, names=ROWS, diffusion_steps=None):
    """The judge's scores and the held-out log-density of each prior `names` of the module's list for the top
    `keep` groups of the nvae run in `run_dir`, fitted to the codes of `train_images` images (`fitted_images`;
    as many tenths of test images, at most the test split, held out)."""
    from keras_vae import judge, metrics
    from keras_vae.codes import posterior_parameters, whitened_posterior_draws
    from keras_vae.data.splits import load_split
    from keras_vae.images import make_grid, save_png
    from keras_vae.runs import load_run

    config, model = load_run(run_dir)
    if config.dataset != "sprites":
        raise SystemExit(f"The sprites judge reads sprites; {run_dir} was trained on {config.dataset}.")
    if getattr(model, "top_prior", "normal") != "normal":
        raise SystemExit(f"prior_holes sets densities fitted after training against an N(0, I) top prior; {run_dir} "
                         f"trained a {model.top_prior!r} top prior, whose samples `nvae_benchmark.py` judges.")
    top = top_mask(model, keep)
    test = load_split(config, "test").head(train_images // 10)
    parts = []
    for index, images in enumerate(fitted_images(config, train_images, test.factors)):
        loc, scale = posterior_parameters(model, images)  # chunk by chunk: only the top columns are kept
        draw_seed = seed + index + 1 if index else seed  # seed + 1 draws the test codes
        parts.append((loc[:, top], scale[:, top], whitened_posterior_draws(model, images, draw_seed)[:, top]))
    train_loc, train_scale, train_draws = (np.concatenate(column) for column in zip(*parts))
    test_draws = whitened_posterior_draws(model, test, seed + 1)[:, top]
    active = metrics.active_units(train_loc)[1] > metrics.ACTIVE_THRESHOLD  # over the top groups' columns
    inactive = train_draws[:, ~active]
    half = len(test_draws) // 2
    sprites_judge = judge.load_judge()
    rows = {}
    for name, (draws, log_density) in fitted_priors(train_draws, train_loc, train_scale, active,
                                                    test_draws[:half, active], test_draws[half:, active], seed,
                                                    names=names, diffusion_steps=diffusion_steps).items():
        images = decode_with(model, draws, top, row_rng(seed, name, 1))
        rows[name] = dict(judge.sample_scores(sprites_judge, images), held_out_log_density=log_density)
        if grids:
            os.makedirs(grids, exist_ok=True)
            save_png(os.path.join(grids, f"{os.path.basename(os.path.normpath(run_dir))}-keep{keep}-{name}.png"),
                     make_grid(images[:GRID], columns=8))
        print(name, json.dumps(rows[name]), flush=True)
    return {"run": os.path.basename(os.path.normpath(run_dir)), "keep": keep, "train_images": len(train_draws),
            "held_out_images": len(test.x) - half, "top_dimensions": int(top.sum()),
            "active_dimensions": int(active.sum()),
            "inactive_draws": {"mean": float(inactive.mean()), "std": float(inactive.std())}, "rows": rows}


def table(report):
    """The Markdown table of one report."""
    lines = ["| prior of the top groups | held-out log-density, nats | confident | square / ellipse / heart |",
             "|---|---|---|---|"]
    for name, row in report["rows"].items():
        density = "–" if row["held_out_log_density"] is None else f"{row['held_out_log_density']:.2f}"
        shares = " / ".join(f"{100 * row[s]:.0f}" for s in ("square", "ellipse", "heart"))
        lines.append(f"| {name} | {density} | {100 * row['confident']:.1f}% | {shares}% |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished nvae run on sprites")
    parser.add_argument("--keep", type=int, default=2, help="the top groups whose prior is replaced")
    parser.add_argument("--train-images", type=int, default=20000,
                        help="images whose posteriors are fitted: the training split's, then sprites rendered "
                             "afresh (a tenth as many test images, at most the 2,000 of the split, give the "
                             "held-out codes)")
    parser.add_argument("--out", help="a JSON file for the figures")
    parser.add_argument("--grids", help="a folder for a grid of 64 samples per prior")
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS, metavar="ROW",
                        help=f"the priors measured: {', '.join(ROWS)}")
    parser.add_argument("--diffusion-steps", type=int, help="the diffusion model's training steps, a multiple of "
                                                            "100 (default code_densities.DIFFUSION_TRAIN_STEPS)")
    args = parser.parse_args(argv)
    report = measure(args.run, args.keep, args.train_images, args.grids, names=args.rows,
                     diffusion_steps=args.diffusion_steps)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    print(f"{report['run']}: top {args.keep} groups, {report['active_dimensions']} of {report['top_dimensions']} "
          "dimensions active")
    print(table(report))


if __name__ == "__main__":
    sys.exit(main())
