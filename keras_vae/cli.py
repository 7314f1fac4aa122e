"""The `keras-vae` command line: click options become a config, one library call does the work."""

import json
import os
import sys

import click

from keras_vae.config import (
    BINARIZATIONS,
    JIT_CHOICES,
    LIKELIHOODS,
    LR_SCHEDULES,
    NOISES,
    POSTERIOR_SCALES,
    PRIORS,
    PRECISIONS,
    STRATEGIES,
    FitConfig,
    read_json_object,
)
from keras_vae.errors import TrainingDiverged, UserError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


class _Group(click.Group):
    """Turns user mistakes into a one-paragraph message and an exit status, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TrainingDiverged as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_DIVERGED)
        except UserError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_USER_ERROR)


@click.group(cls=_Group)
@click.version_option(package_name="keras-vae")
def cli():
    """Variational autoencoders in Keras 3 on TensorFlow Probability."""


# ------------------------------------------------------------------------ fit
FIT_OPTIONS = [
    click.option("--dataset", help="A registered dataset (see `keras-vae datasets`) or a path to a .npz file or image folder. Default: sprites."),
    click.option("--data-dir", help="Folder with the dataset's files (IDX .gz or Keras .npz); also KERAS_VAE_DATA_DIR."),
    click.option("--model", help="A registered model (see `keras-vae models`). Default: vae."),
    click.option("--architecture", help="mlp (default), conv or conv-small."),
    click.option("--latent-dim", type=int, help="Size of the latent code. Default: 16."),
    click.option("--likelihood", type=click.Choice(LIKELIHOODS), help="p(x|z). Default: bernoulli."),
    click.option("--likelihood-scale", type=float, help="Fixed std of a Gaussian likelihood (default: learned)."),
    click.option("--posterior-scale", type=click.Choice(POSTERIOR_SCALES), help="How q(z|x)'s scale is made positive. Default: softplus."),
    click.option("--binarize", type=click.Choice(BINARIZATIONS), help="Binarization of the data. Default: dynamic."),
    click.option("--validation-split", type=float, help="Held-out fraction when the dataset has no test split. Default: 0.1."),
    click.option("--beta", type=float, help="Weight of the KL term. Default: 1."),
    click.option("--kl-warmup-steps", type=int, help="Steps over which beta rises linearly from 0. Default: half the run's steps."),
    click.option("--free-bits", type=float, help="Floor on each latent dimension's KL, in nats. Default: 0."),
    click.option("--prior", type=click.Choice(PRIORS), help="p(z): normal (default), mog (learned mixture) or vamp (VampPrior)."),
    click.option("--prior-components", type=int, help="Components / pseudo-inputs of a learned prior. Default: 10."),
    click.option("--noise", type=click.Choice(NOISES), help="dae: gaussian (default) or masking corruption."),
    click.option("--noise-level", type=float, help="dae: the Gaussian's std or the masked fraction. Default: 0.3."),
    click.option("--capacity-max", type=float, help="beta_vae: the KL capacity C reached, in nats. Default: 25."),
    click.option("--capacity-steps", type=int, help="beta_vae: steps over which C rises. Default: 100000."),
    click.option("--iw-k", type=int, help="iwae: importance samples per example. Default: 5."),
    click.option("--codebook-size", type=int, help="vq_vae: codebook vectors. Default: 512."),
    click.option("--codebook-dim", type=int, help="vq_vae: numbers per codebook vector. Default: 16."),
    click.option("--commitment", type=float, help="vq_vae: weight of the commitment loss. Default: 0.25."),
    click.option("--vq-ema/--no-vq-ema", default=None, help="vq_vae: EMA codebook updates (default: off, the codebook loss)."),
    click.option("--epochs", type=int, help="Default: 10."),
    click.option("--batch-size", type=int, help="Global batch size. Default: 128."),
    click.option("--learning-rate", type=float, help="Adam's learning rate. Default: 1e-3."),
    click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), help="constant, or cosine decay to 0 over the run."),
    click.option("--seed", type=int, help="Seeds data order, binarization and noise. Default: 0."),
    click.option("--precision", type=click.Choice(PRECISIONS), help="Default: float32."),
    click.option("--steps-per-execution", type=int, help="Training steps per tf.function call. Default: 1."),
    click.option("--jit-compile", type=click.Choice(JIT_CHOICES), help="XLA. Default: auto."),
    click.option("--strategy", type=click.Choice(STRATEGIES), help="tf.distribute strategy. Default: auto."),
    click.option("--cpu-replicas", type=int, help="Split the CPU into N logical devices for mirrored training."),
    click.option("--run-dir", help="Where checkpoints, logs and history go. Default: runs/<dataset>-<model>-<time>."),
    click.option("--export-dir", help="Where the SavedModel goes. Default: saved_models."),
    click.option("--export-name", help="Model name under the export dir. Default: the run directory's name."),
    click.option("--export/--no-export", default=None, help="Export a SavedModel at the end (default: yes)."),
]


def _with_options(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def merge_config(config_file, flags):
    """FitConfig defaults < the --config file < flags given on the command line."""
    values = read_json_object(config_file) if config_file else {}
    values.update({key: value for key, value in flags.items() if value is not None})
    source = f"Config file {config_file}" if config_file else "The command line"
    return FitConfig.from_dict(values, source=source)


@cli.command()
@click.option("--config", "config_file", type=click.Path(), help="JSON file with the same keys as the flags; flags override it.")
@click.option("--force", is_flag=True, help="Start the run directory over instead of resuming it.")
@_with_options(FIT_OPTIONS)
def fit(config_file, force, **flags):
    """Train a model and export it as a SavedModel (resuming an interrupted run)."""
    config = merge_config(config_file, flags)
    from keras_vae.train import fit as run_fit

    result = run_fit(config, force=force, log=click.echo)
    if result["complete"]:
        return
    history, split = result["history"], result["split"].capitalize()
    if result["val_elbo"] is not None:
        summary = (f"{split} ELBO {result['val_elbo']:.2f} nats/example "
                   f"(reconstruction {history['val_reconstruction_loss'][-1]:.2f}, KL {history['val_kl'][-1]:.2f})")
    else:
        summary = f"{split} reconstruction loss {history['val_reconstruction_loss'][-1]:.2f} nats/example"
    exported = f"; exported to {result['export_path']}" if result["export_path"] else ""
    click.echo(f"Done. {summary}; run in {result['run_dir']}{exported}.")


@cli.command("fit-prior")
@click.argument("run_dir")
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option("--export-dir", help="Where the new SavedModel version goes (default: the run's --export-dir).")
@click.option("--export/--no-export", default=True, show_default=True, help="Export a new version with the prior.")
def fit_prior(run_dir, epochs, batch_size, learning_rate, export_dir, export):
    """Train a VQ-VAE run's PixelCNN prior over its code maps; sampling then goes through it."""
    from keras_vae.train import fit_prior as run_fit_prior

    result = run_fit_prior(run_dir, epochs, batch_size, learning_rate, export, export_dir)
    exported = f"; exported to {result['export_path']}" if result["export_path"] else ""
    click.echo(f"Done. Test -log p(code map) {result['test_nats']:.2f} nats under the PixelCNN "
               f"(uniform prior: {result['uniform_nats']:.2f}){exported}.")


@cli.command()
def datasets():
    """List the registered datasets."""
    from keras_vae.data.datasets import DATASETS

    for name in DATASETS.names():
        doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name:15s} {doc[0] if doc else ''}")


@cli.command()
def models():
    """List the registered models."""
    from keras_vae.models import get_model_class, model_names

    for name in model_names():
        doc = (get_model_class(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name:10s} {doc[0] if doc else ''}")


# --------------------------------------------------------------------- export
@cli.command()
@click.argument("run_dir")
@click.option("--export-dir", default="saved_models", show_default=True)
@click.option("--name", help="Model name (default: the run directory's name).")
@click.option("--version", type=int, help="Version number (default: the next free one).")
def export(run_dir, export_dir, name, version):
    """Export a trained run as a SavedModel in TF Serving's layout."""
    from keras_vae.export import export_saved_model
    from keras_vae.train import load_run

    _, model = load_run(run_dir)
    name = name or os.path.basename(os.path.normpath(run_dir))
    path = export_saved_model(model, export_dir, name, version)
    click.echo(f"Exported {run_dir} to {path}.")


@cli.command()
@click.option("--saved-model", required=True, help="A SavedModel version folder.")
@click.option("--signature", default="serving_default", show_default=True)
@click.option("--input", "input_path", help="A .npy array or an image file (for x or z inputs).")
@click.option("--num-samples", type=int, default=8, show_default=True, help="For the sample signature.")
@click.option("--seed", type=int, default=0, show_default=True, help="For the sample signature.")
@click.option("--label", type=int, help="Conditional models: the label y for every input (or for sample).")
@click.option("--output", help="Write outputs to this .npz, or the x_mean images to this .png grid.")
def predict(saved_model, signature, input_path, num_samples, seed, label, output):
    """Run one signature of a SavedModel locally, as TF Serving would."""
    from keras_vae.predict import run_signature, write_outputs

    outputs = run_signature(saved_model, signature, input_path, num_samples, seed, label)
    if output:
        write_outputs(outputs, output)
        click.echo(f"Wrote {', '.join(sorted(outputs))} to {output}.")
    else:
        click.echo(json.dumps({k: v.tolist() for k, v in outputs.items()}))


# ----------------------------------------------------------------- evaluate
@cli.command()
@click.argument("run_dir")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--iw-samples", type=int, default=1000, show_default=True, help="K importance samples for nll_iw (5000 is the literature standard).")
@click.option("--batch-size", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate(run_dir, split, iw_samples, batch_size, as_json):
    """ELBO, importance-weighted -log p(x), bits/dim, active units, probe accuracy, MIG."""
    from keras_vae.evaluate import evaluate_run, format_table

    result = evaluate_run(run_dir, split, iw_samples, batch_size, progress=not as_json)
    click.echo(json.dumps(result) if as_json else format_table(result))


# ------------------------------------------------------------------ pictures
def _explore(run_dir, num=None):
    """(config, model, test split) of a run, the split cut to `num` examples."""
    from keras_vae.evaluate import load_split
    from keras_vae.train import load_run

    config, model = load_run(run_dir)
    data = load_split(config, "test")
    if num is not None:
        data.x, data.y = data.x[:num], (data.y[:num] if data.y is not None else None)
    return config, model, data


def _labels(model, data):
    """The split's labels when the model is conditional, else None."""
    from keras_vae.evaluate import model_labels

    return model_labels(model, data)


def _label_option(model, label):
    """A checked --label: required meaning for conditional models, refused for the others."""
    if label is None:
        return None
    if not model.uses_labels:
        raise UserError(f"--label applies to conditional models (cvae) only; this run's model is {type(model).__name__}.")
    if not 0 <= label < model.num_classes:
        raise UserError(f"--label must lie in 0..{model.num_classes - 1}. Received: label={label}.")
    return label


def _continuous(model, command):
    if not model.continuous_code:
        raise UserError(
            f"`{command}` sweeps a continuous code, and this {type(model).__name__} has a discrete one. "
            "Use sample, reconstruct or interpolate."
        )


def _kl_per_dim(model, x, y=None):
    terms = model.compute_terms(x[:1000], y=None if y is None else y[:1000])
    if terms.get("kl_per_dim") is None:
        return [0.0] * model.code_dim
    return terms["kl_per_dim"].numpy().mean(axis=0)


def _positive(**values):
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive. Received: {name}={value}.")


def _write(out, grid, run_dir, tag):
    from keras_vae.explore import write_picture

    write_picture(out, grid, run_dir, tag)
    click.echo(f"Wrote {out} ({grid.shape[1]}x{grid.shape[0]}).")


_run_arg = click.argument("run_dir")
_out_opt = click.option("--out", required=True, help="The PNG file to write.")


@cli.command()
@_run_arg
@_out_opt
@click.option("--num", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Scale of the prior's noise.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--label", type=int, help="Conditional models: the class to draw (default: one row per class).")
def sample(run_dir, out, num, temperature, seed, label):
    """A grid of samples from the prior."""
    from keras_vae.explore import sample_grid
    from keras_vae.train import load_run

    _positive(num=num, temperature=temperature)
    _, model = load_run(run_dir)
    label = _label_option(model, label)
    _write(out, sample_grid(model, num, temperature, seed, y=label), run_dir,
           "samples" if label is None else f"samples_{label}")


@cli.command()
@_run_arg
@_out_opt
@click.option("--num", type=int, default=20, show_default=True)
def reconstruct(run_dir, out, num):
    """Test images (rows) above their reconstructions."""
    from keras_vae.explore import reconstruction_grid

    _positive(num=num)
    _, model, data = _explore(run_dir, num)
    _write(out, reconstruction_grid(model, data.x, columns=min(10, num), y=_labels(model, data)), run_dir,
           "reconstructions")


@cli.command()
@_run_arg
@_out_opt
@click.option("--pairs", type=int, default=6, show_default=True)
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--spherical", is_flag=True, help="Spherical (slerp) instead of linear interpolation.")
def interpolate(run_dir, out, pairs, steps, spherical):
    """Decoded paths between the codes of pairs of test images."""
    from keras_vae.explore import interpolation_grid

    _positive(pairs=pairs, steps=steps)
    _, model, data = _explore(run_dir, 2 * pairs)
    x_pairs = list(zip(data.x[0::2], data.x[1::2]))
    labels = _labels(model, data)
    y_pairs = list(zip(labels[0::2], labels[1::2])) if labels is not None else None
    _write(out, interpolation_grid(model, x_pairs, steps, spherical, y_pairs), run_dir, "interpolations")


@cli.command()
@_run_arg
@_out_opt
@click.option("--range", "value_range", type=float, default=3.0, show_default=True)
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--dims", help="Comma-separated latent dimensions (default: all, most KL first).")
@click.option("--index", type=int, default=0, show_default=True, help="Which test image fixes the other dimensions.")
def traverse(run_dir, out, value_range, steps, dims, index):
    """Each latent dimension swept over [-range, range], the others fixed."""
    from keras_vae.explore import traversal_grid

    _positive(range=value_range, steps=steps)
    _, model, data = _explore(run_dir)
    _continuous(model, "traverse")
    labels = _labels(model, data)
    try:
        chosen = [int(d) for d in dims.split(",")] if dims else None
    except ValueError:
        raise UserError(f"--dims must be comma-separated integers. Received: {dims!r}.") from None
    if not 0 <= index < len(data.x):
        raise UserError(f"--index must lie in 0..{len(data.x) - 1}. Received: index={index}.")
    grid = traversal_grid(model, data.x[index], _kl_per_dim(model, data.x, labels), value_range, steps, chosen,
                          y=None if labels is None else labels[index])
    _write(out, grid, run_dir, "traversal")


@cli.command()
@_run_arg
@_out_opt
@click.option("--size", type=int, default=15, show_default=True)
@click.option("--label", type=int, help="Conditional models: the class to decode (default 0).")
def manifold(run_dir, out, size, label):
    """The decoded grid over the prior's quantiles of two latent dimensions."""
    from keras_vae.explore import manifold_grid

    _positive(size=size)
    _, model, data = _explore(run_dir)
    _continuous(model, "manifold")
    label = _label_option(model, label)
    if model.uses_labels and label is None:
        label = 0
    kl = _kl_per_dim(model, data.x, _labels(model, data))
    _write(out, manifold_grid(model, kl, size, y=label), run_dir, "manifold")


@cli.command()
@_run_arg
@_out_opt
@click.option("--label", type=int, required=True, help="The label whose attribute vector is added.")
@click.option("--num", type=int, default=8, show_default=True, help="Test images to edit.")
@click.option("--steps", type=int, default=8, show_default=True)
@click.option("--scale", type=float, default=1.5, show_default=True, help="The largest multiple of the vector added.")
def attribute(run_dir, out, label, num, steps, scale):
    """Adds the attribute vector of a label (mean code with it minus without) to test images."""
    from keras_vae.explore import attribute_grid, attribute_vector

    _positive(num=num, steps=steps)
    _, model, data = _explore(run_dir)
    if model.uses_labels:
        raise UserError("A conditional model takes the label as an input: draw a class with "
                        "`keras-vae sample --label K` instead of adding an attribute vector.")
    if data.y is None:
        raise UserError(f"{run_dir}'s dataset has no labels, so it has no attribute vectors.")
    means = model.encode(data.x)[0].numpy()
    vector = attribute_vector(means, data.y, label)
    others = data.x[data.y != label][:num]
    _write(out, attribute_grid(model, others, vector, steps, scale), run_dir, f"attribute_{label}")


@cli.command()
@_run_arg
@click.option("--num", type=int, default=2000, show_default=True, help="Test examples to embed.")
@click.option("--out", help="Folder for the projector files (default: RUN_DIR/logs/projector).")
def embed(run_dir, num, out):
    """Writes test-set codes, labels and a sprite for TensorBoard's Embedding Projector."""
    from keras_vae.explore import write_projector

    _positive(num=num)
    _, model, data = _explore(run_dir, num)
    out = out or os.path.join(run_dir, "logs", "projector")
    from keras_vae.evaluate import encode_means

    write_projector(out, encode_means(model, data, 500), data.y, data.x)
    click.echo(f"Wrote {len(data.x)} embeddings to {out}; view them with: tensorboard --logdir {os.path.dirname(out)}")


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli.main(args=argv, prog_name="keras-vae")


if __name__ == "__main__":
    sys.exit(main())
