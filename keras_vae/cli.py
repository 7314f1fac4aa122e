"""The `keras-vae` command line: click options become a config, one library call does the work."""

import json
import os
import sys

import click

from keras_vae.config import PRIOR_FIT_METHODS
from keras_vae.errors import TrainingDiverged, UserError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


DEBUG_ENV = "KERAS_VAE_DEBUG"


def describe_failure(error):
    """A one-paragraph message for a failure of the environment or a library's refusal of a value,
    or None for an error that is a bug (and should show its traceback)."""
    tf = sys.modules.get("tensorflow")
    if isinstance(error, MemoryError) or (tf is not None and isinstance(error, tf.errors.ResourceExhaustedError)):
        return ("Out of memory. Use a smaller --batch-size or model (--latent-dim, --architecture), fewer "
                "--iw-samples, or a machine with more memory.")
    if isinstance(error, OSError) and error.errno is not None:
        where = f" {error.filename}" if error.filename else ""
        advice = {13: "Check the permissions of that path, or choose another folder.",
                  28: "Free some space on that disk, or choose another folder (--run-dir, --export-dir)."}
        return (f"Cannot use{where}: {error.strerror}. "
                f"{advice.get(error.errno, 'Check that path, or choose another folder.')}")
    if tf is not None and isinstance(error, tf.errors.InvalidArgumentError):
        return f"TensorFlow refused a value: {error.message.strip().splitlines()[0]}"
    if isinstance(error, ValueError):
        return f"A value was refused: {error}"
    return None


class _Group(click.Group):
    """Turns user mistakes and environment faults into a one-paragraph message and an exit status,
    never a traceback (exit 2; 3 for a diverged run). `--debug`, or KERAS_VAE_DEBUG=1, shows the
    traceback instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TrainingDiverged as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_DIVERGED)
        except UserError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as error:  # noqa: BLE001 - mapped below, or re-raised
            message = describe_failure(error)
            if message is None or ctx.params.get("debug") or os.environ.get(DEBUG_ENV):
                raise
            click.echo(f"Error: {message} (Run with --debug for the traceback.)", err=True)
            ctx.exit(EXIT_USER_ERROR)


@click.group(cls=_Group)
@click.version_option(package_name="keras-vae")
@click.option("--debug", is_flag=True, help="Show the full traceback of a failure (also KERAS_VAE_DEBUG=1).")
def cli(debug):
    """Variational autoencoders in Keras 3 on TensorFlow Probability."""


# ------------------------------------------------------------------------ fit
def fit_options():
    """One click option per declared hyperparameter (the run's and every model's), none with a default:
    a flag left out takes the config file's value, else the declared default."""
    from keras_vae.config import flag_rows
    from keras_vae.data.defaults import DATASET_DEFAULTS

    options = []
    for h, applies_to in flag_rows():
        shown = "null" if h.default is None else h.default
        per_data = ", ".join(f"{name}: {values[h.name]}" for name, values in sorted(DATASET_DEFAULTS.items())
                             if h.name in values)
        text = (f"{h.help} Default: {shown}" + (f" ({per_data})" if per_data else "") + "."
                + ("" if applies_to == "all models" else f" Models: {applies_to}."))
        if h.type is bool:
            options.append(click.Option([f"{h.flag}/--no-{h.flag[2:]}"], default=None, help=text))
        else:
            kind = click.Choice(h.choices) if h.choices else h.type
            options.append(click.Option([h.flag], type=kind, help=text))
    return options


class _FitCommand(click.Command):
    """`fit`, whose options come from the hyperparameter declarations, made when first needed
    (they need the model registry, which imports TensorFlow)."""

    def get_params(self, ctx):
        if not getattr(self, "_declared", False):
            self.params = self.params + fit_options()
            self._declared = True
        return super().get_params(ctx)


def merge_config(config_file, flags):
    """Declared defaults < the --config file < flags given on the command line."""
    from keras_vae.config import FitConfig, read_json_object

    values = read_json_object(config_file) if config_file else {}
    values.update({key: value for key, value in flags.items() if value is not None})
    source = f"Config file {config_file}" if config_file else "The command line"
    return FitConfig.from_dict(values, source=source)


@cli.command(cls=_FitCommand)
@click.option("--config", "config_file", type=click.Path(), help="JSON file with the same keys as the flags; flags override it.")
@click.option("--force", is_flag=True, help="Start the run directory over instead of resuming it.")
def fit(config_file, force, **flags):
    """Train a model and export it as a SavedModel (resuming an interrupted run)."""
    from keras_vae.train import fit as run_fit

    result = run_fit(merge_config(config_file, flags), force=force, log=click.echo)
    if result["complete"]:
        return
    validation, split = result["validation"], result["split"].capitalize()
    if validation.get("elbo") is not None:
        summary = (f"{split} ELBO {validation['elbo']:.2f} nats/example "
                   f"(reconstruction {validation['reconstruction_loss']:.2f}, KL {validation['kl']:.2f})")
    else:
        summary = f"{split} reconstruction loss {validation['reconstruction_loss']:.2f} nats/example"
    refit = result.get("prior_refit")
    if refit and refit["refitted"]:
        summary += (f"; with the refitted prior {refit['test_elbo_after']:.2f} (fixed noise; "
                    f"{refit['test_elbo_before']:.2f} with the trained one)")
    exported = f"; exported to {result['export_path']}" if result["export_path"] else ""
    click.echo(f"Done. {summary}; run in {result['run_dir']}{exported}.")
    click.echo("Seconds: " + ", ".join(f"{phase} {value:.1f}" for phase, value in result["timings"].items()) + ".")


@cli.command("fit-prior")
@click.argument("run_dir")
@click.option("--epochs", type=int, default=20, show_default=True,
              help="Epochs of the PixelCNN priors or of the contrastive prior's classifier; for a mixture prior, "
                   "the most EM iterations.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option("--export-dir", help="Where the new SavedModel version goes (default: the run's --export-dir).")
@click.option("--export/--no-export", default=True, show_default=True, help="Export a new version with the prior.")
@click.option("--method", type=click.Choice(PRIOR_FIT_METHODS), default="em", show_default=True,
              help="For a mixture prior: em (EM from the trained mixture) or aggregate (one component per "
                   "training example's posterior, widened by a bandwidth chosen on held-out codes). For an nvae: "
                   "contrastive (its top groups' prior, N(0, I) or a learned top prior, reweighted by a "
                   "classifier of their aggregate posterior against it).")
@click.option("--top-groups", type=int, default=None,
              help="With --method contrastive: the top groups reweighted (default: those of every scale but the "
                   "finest; a learned top prior's own, which it must be).")
@click.option("--normalizer-draws", type=int, default=None,
              help="With --method contrastive: the base prior's draws that estimate log Z (default 200,000; its "
                   "error shrinks as 1/sqrt(draws)).")
def fit_prior(run_dir, epochs, batch_size, learning_rate, export_dir, export, method, top_groups, normalizer_draws):
    """Fit a finished run's prior to the codes its encoder makes.

    A discrete-code run (vq_vae, vq_vae2) trains its PixelCNN priors over its code maps, and sampling then goes
    through them. A run with a learned mixture prior (--prior mog) has the mixture refitted by EM to draws from
    its aggregate posterior over the training split (ex-post density estimation), by EM or, with --method
    aggregate, replaced by that aggregate posterior's kernel estimate; a refit that held-out codes do not
    prefer is not kept. An nvae run (--method contrastive) has the prior of its top groups (N(0, I), or the
    learned top prior it was trained with) reweighted by a classifier trained to tell their aggregate posterior
    from it (a noise-contrastive prior); its samples are then drawn by sampling-importance-resampling."""
    from keras_vae.code_prior import fit_prior as run_fit_prior

    result = run_fit_prior(run_dir, epochs, batch_size, learning_rate, export, export_dir, method=method,
                           top_groups=top_groups, normalizer_draws=normalizer_draws)
    exported = f"; exported to {result['export_path']}" if result["export_path"] else ""
    if method == "contrastive":
        click.echo(f"Done. The top {result['groups']} groups' prior ({result['dimensions']} dimensions) is "
                   f"reweighted by the classifier of epoch {result['history']['best_epoch']}: held-out codes "
                   f"{result['held_out_gain']:+.2f} nats over the trained prior, log Z {result['log_normalizer']:.2f}, SIR's "
                   f"effective sample size {result['effective_sample_size']:.0f}; test ELBO "
                   f"{result['test_elbo_before']:.2f} -> {result['test_elbo_after']:.2f}{exported}.")
        return
    if "prior_em" in result["history"]:
        curve = result["history"]["prior_em"]
        if not result["iterations"]:
            click.echo(f"Done. EM did not raise the held-out codes' log p(z) ({curve[0]:.2f} nats): the "
                       "trained mixture is kept, unchanged.")
            return
        click.echo(f"Done. Refitted the mixture prior by EM ({result['iterations']} iterations): mean log p(z) "
                   f"of held-out training codes {curve[0]:.2f} -> {curve[-1]:.2f} nats; test ELBO "
                   f"{result['test_elbo_before']:.2f} -> {result['test_elbo_after']:.2f}{exported}.")
        return
    if "prior_aggregate" in result["history"]:
        scores, trained = result["history"]["prior_aggregate"], result["history"]["trained_mixture"]
        factor = max(scores, key=scores.get)
        if not result["refitted"]:
            click.echo(f"Done. Held-out codes are no likelier under the aggregate posterior ({scores[factor]:.2f} "
                       f"nats) than under the trained mixture ({trained:.2f}): it is kept, unchanged.")
            return
        click.echo(f"Done. The mixture prior is now the aggregate posterior of {result['codes']} training codes "
                   f"(bandwidth {factor} of each dimension's spread): mean log p(z) of held-out training codes "
                   f"{trained:.2f} -> {scores[factor]:.2f} nats; test ELBO {result['test_elbo_before']:.2f} -> "
                   f"{result['test_elbo_after']:.2f}{exported}.")
        return
    click.echo(f"Done. Test -log p(code maps) {result['test_nats']:.2f} nats under the PixelCNN priors "
               f"(uniform prior: {result['uniform_nats']:.2f}), trained on {result['replicas']} "
               f"replica{'s' if result['replicas'] > 1 else ''}{exported}.")


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
    from keras_vae.models import describe_models

    for name, summary in describe_models().items():
        click.echo(f"{name:12s} {summary}")


# --------------------------------------------------------------------- export
@cli.command()
@click.argument("run_dir")
@click.option("--export-dir", default="saved_models", show_default=True)
@click.option("--name", help="Model name (default: the run directory's name).")
@click.option("--version", type=int, help="Version number (default: the next free one).")
@click.option("--max-samples", type=int, help="The most images one `sample` request may ask for. Default: 1024.")
def export(run_dir, export_dir, name, version, max_samples):
    """Export a trained run as a SavedModel in TF Serving's layout."""
    from keras_vae.export import export_saved_model
    from keras_vae.runs import load_run

    _, model = load_run(run_dir)
    name = name or os.path.basename(os.path.normpath(run_dir))
    path = export_saved_model(model, export_dir, name, version, max_samples)
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
@click.option("--sample-metrics", is_flag=True,
              help="Add FID, KID, precision/recall and Inception Score of samples, rFID, PSNR and SSIM.")
@click.option("--num-samples", type=click.IntRange(min=2), help="Prior samples for --sample-metrics (default: the split's size).")
@click.option("--disentanglement", is_flag=True,
              help="Add BetaVAE, FactorVAE, SAP, DCI, modularity and explicitness (datasets with factors).")
@click.option("--disentanglement-points", type=click.IntRange(min=2),
              help="Training points of each disentanglement metric (default: disentanglement_lib's 10,000).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate(run_dir, split, iw_samples, batch_size, sample_metrics, num_samples, disentanglement,
             disentanglement_points, as_json):
    """ELBO, importance-weighted -log p(x), bits/dim, active units, probe accuracy, MIG; on request sample
    quality and disentanglement."""
    from keras_vae.evaluate import evaluate_run, format_table

    result = evaluate_run(run_dir, split, iw_samples, batch_size, progress=not as_json, sample_metrics=sample_metrics,
                          num_samples=num_samples, disentanglement=disentanglement,
                          disentanglement_points=disentanglement_points, log=lambda message: click.echo(message, err=as_json))
    click.echo(json.dumps(result) if as_json else format_table(result))


# ------------------------------------------------------------------ pictures
def _write(out, grid, run_dir, tag):
    from keras_vae.explore import write_picture

    write_picture(out, grid, run_dir, tag)
    click.echo(f"Wrote {out} ({grid.shape[1]}x{grid.shape[0]}).")


_run_arg = click.argument("run_dir")
_out_opt = click.option("--out", required=True, help="The PNG file to write (for a run on recordings: the folder "
                        "for its WAV files and spectrogram picture).")


def _wrote_audio(paths):
    click.echo(f"Wrote {len(paths)} files to {os.path.dirname(paths[0])}: " + ", ".join(os.path.basename(p) for p in paths))


_temperature_opt = click.option("--temperature", type=float, default=1.0, show_default=True,
                                help="Scale of the prior's noise (nvae: its batch norms are first readjusted to "
                                     "samples at it).")
_seed_opt = click.option("--seed", type=int, default=0, show_default=True)


def _on_signals(model):
    return len(model.image_shape) == 2


@cli.command()
@_run_arg
@_out_opt
@click.option("--num", type=int, default=64, show_default=True)
@_temperature_opt
@_seed_opt
@click.option("--label", type=int, help="Conditional models: the class to draw (default: one row per class).")
def sample(run_dir, out, num, temperature, seed, label):
    """A grid of samples from the prior."""
    from keras_vae.explore import check_label, check_positive, sample_grid
    from keras_vae.runs import load_run

    check_positive(num=num, temperature=temperature)
    config, model = load_run(run_dir)
    label = check_label(model, label)
    model.prepare_sampling(temperature)
    if _on_signals(model):
        from keras_vae.listen import sample_audio

        return _wrote_audio(sample_audio(model, config, out, num, temperature, seed, label))
    _write(out, sample_grid(model, num, temperature, seed, y=label), run_dir,
           "samples" if label is None else f"samples_{label}")


@cli.command()
@_run_arg
@_out_opt
@click.option("--num", type=int, default=20, show_default=True)
def reconstruct(run_dir, out, num):
    """Test images (rows) above their reconstructions."""
    from keras_vae.explore import open_run, reconstruction_picture

    config, model, data = open_run(run_dir)  # the picture takes its first `num` images itself
    if _on_signals(model):
        from keras_vae.listen import reconstruct_audio

        return _wrote_audio(reconstruct_audio(model, config, data, out, num))
    _write(out, reconstruction_picture(model, data, num), run_dir, "reconstructions")


@cli.command()
@_run_arg
@click.option("--input", "input_path", required=True, type=click.Path(), help="A WAV file at the run's sample rate.")
@click.option("--speaker", required=True, help="The voice to speak in: a speaker's name (fsdd: george, jackson, "
              "lucas, nicolas, theo, yweweler) or index, among the labels the model is conditioned on.")
@click.option("--out", required=True, help="The WAV file to write.")
def convert(run_dir, input_path, speaker, out):
    """Voice conversion: the recording's codes decoded in another speaker's voice (vq_vae --condition speaker)."""
    from keras_vae.listen import convert as convert_recording

    if not os.path.isfile(input_path):
        raise UserError(f"--input {input_path} does not exist.")
    index = convert_recording(run_dir, input_path, speaker, out)
    click.echo(f"Wrote {out} ({speaker!r}, label {index}).")


@cli.command("swap-levels")
@_run_arg
@_out_opt
@click.option("--num", type=int, default=10, show_default=True)
def swap_levels(run_dir, out, num):
    """vq_vae2: test images a and b, then a's top codes decoded with b's bottom codes, and the reverse."""
    from keras_vae.explore import level_swap_picture, open_run

    _, model, data = open_run(run_dir)
    _write(out, level_swap_picture(model, data, num), run_dir, "swapped_levels")


@cli.command()
@_run_arg
@_out_opt
@click.option("--num", type=int, default=8, show_default=True)
@_temperature_opt
@_seed_opt
def resample(run_dir, out, num, temperature, seed):
    """nvae, hvae: test images, then rows keeping each image's top k latent groups and drawing the rest, k from
    all groups (the reconstruction) down to none (samples). (nvae below T = 1: the batch norms are readjusted
    first, which changes its encoding too, as in NVAE.)"""
    from keras_vae.explore import check_positive, open_run, resample_picture

    check_positive(num=num, temperature=temperature)
    _, model, data = open_run(run_dir)
    if model.generation_order() is not None:
        model.prepare_sampling(temperature)
    _write(out, resample_picture(model, data, num, temperature, seed), run_dir, "resampled_groups")


@cli.command()
@_run_arg
@_out_opt
@click.option("--pairs", type=int, default=6, show_default=True)
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--spherical", is_flag=True, help="Spherical (slerp) instead of linear interpolation.")
def interpolate(run_dir, out, pairs, steps, spherical):
    """Decoded paths between the codes of pairs of test images."""
    from keras_vae.explore import interpolation_picture, open_run

    _, model, data = open_run(run_dir)  # the picture takes its first 2·pairs images itself
    _write(out, interpolation_picture(model, data, pairs, steps, spherical), run_dir, "interpolations")


@cli.command()
@_run_arg
@_out_opt
@click.option("--range", "value_range", type=float, default=3.0, show_default=True)
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--dims", help="Comma-separated latent dimensions (default: all, most KL first).")
@click.option("--index", type=int, default=0, show_default=True, help="Which test image fixes the other dimensions.")
def traverse(run_dir, out, value_range, steps, dims, index):
    """Each latent dimension swept over [-range, range], the others fixed."""
    from keras_vae.explore import open_run, traversal_picture

    try:
        chosen = [int(d) for d in dims.split(",")] if dims else None
    except ValueError:
        raise UserError(f"--dims must be comma-separated integers. Received: {dims!r}.") from None
    _, model, data = open_run(run_dir)
    _write(out, traversal_picture(model, data, index, value_range, steps, chosen), run_dir, "traversal")


@cli.command()
@_run_arg
@_out_opt
@click.option("--size", type=int, default=15, show_default=True)
@click.option("--label", type=int, help="Conditional models: the class to decode (default 0).")
def manifold(run_dir, out, size, label):
    """The decoded grid over the prior's quantiles of two latent dimensions."""
    from keras_vae.explore import manifold_picture, open_run

    _, model, data = open_run(run_dir)
    _write(out, manifold_picture(model, data, size, label), run_dir, "manifold")


@cli.command()
@_run_arg
@_out_opt
@click.option("--label", type=int, required=True, help="The label whose attribute vector is added.")
@click.option("--num", type=int, default=8, show_default=True, help="Test images to edit.")
@click.option("--steps", type=int, default=8, show_default=True)
@click.option("--scale", type=float, default=1.5, show_default=True, help="The largest multiple of the vector added.")
def attribute(run_dir, out, label, num, steps, scale):
    """Adds the attribute vector of a label (mean code with it minus without) to test images."""
    from keras_vae.explore import attribute_picture, open_run

    _, model, data = open_run(run_dir)
    _write(out, attribute_picture(model, data, label, num, steps, scale), run_dir, f"attribute_{label}")


@cli.command()
@_run_arg
@click.option("--num", type=int, default=2000, show_default=True, help="Test examples to embed.")
@click.option("--out", help="Folder for the projector files (default: RUN_DIR/logs/projector).")
def embed(run_dir, num, out):
    """Writes test-set codes, labels and a sprite for TensorBoard's Embedding Projector."""
    from keras_vae.codes import encode_means
    from keras_vae.explore import check_positive, open_run, write_projector

    check_positive(num=num)
    _, model, data = open_run(run_dir, num)
    out = out or os.path.join(run_dir, "logs", "projector")
    write_projector(out, encode_means(model, data), data.y, data.x)
    click.echo(f"Wrote {len(data.x)} embeddings to {out}; view them with: tensorboard --logdir {os.path.dirname(out)}")


TENSORFLOW_FREE = {"models", "datasets", "--help", "--version", "-h"}


def import_tensorflow_quietly():
    """Imports TensorFlow (and the libraries that load its C++ parts again) with file descriptor 2
    pointed at /dev/null: its start-up lines (oneDNN notice, missing CUDA drivers) are written by
    C++ before any log level applies. Errors still surface as Python exceptions."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
        import tensorflow_probability  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv=None):
    """The console entry point: only the command's own output, unless the user set TF_CPP_MIN_LOG_LEVEL."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        command = next((a for a in args if not a.startswith("--debug")), None)
        if command not in TENSORFLOW_FREE and command is not None:
            import_tensorflow_quietly()
    cli.main(args=args, prog_name="keras-vae")


if __name__ == "__main__":
    sys.exit(main())
