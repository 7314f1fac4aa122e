"""Defaults that depend on the data: chosen per dataset, overridden by every flag, recorded in the run."""

import json
import os

import numpy as np
import pytest

from conftest import invoke, tiny_images
from keras_vae.config import FitConfig, general_declarations
from keras_vae.data.defaults import DATASET_DEFAULTS, LARGE_IMAGE, defaults_for

SPRITES = DATASET_DEFAULTS["sprites"]
# dsprites' and the user's large images: sprites' network and prior, not its β or its epochs (sized to its 20,000).
LARGE = {name: value for name, value in SPRITES.items() if name not in ("beta", "epochs")}


def test_sprites_has_its_own_measured_defaults():
    # The declared defaults were chosen on 28x28 Fashion-MNIST; sprites must not inherit them unmeasured.
    declared = general_declarations()
    assert {"architecture", "latent_dim"} <= set(SPRITES)
    assert SPRITES["architecture"] != declared["architecture"].default
    for name, value in SPRITES.items():
        assert declared[name].check(value) == value  # every default is a valid value of its setting


def test_sprites_trains_longer_but_the_large_images_that_share_its_network_do_not():
    assert FitConfig().with_defaults(defaults_for("sprites", (64, 64, 1))).epochs == 12
    declared = general_declarations()["epochs"].default
    assert FitConfig().with_defaults(defaults_for("dsprites", (64, 64, 1))).epochs == declared
    assert FitConfig().with_defaults(defaults_for("mine.npz", (64, 64, 1))).epochs == declared


def test_a_config_knows_which_settings_were_given():
    config = FitConfig(epochs=3)
    assert config.given == {"epochs"}
    assert config.replace(seed=4).given == {"epochs", "seed"}
    assert FitConfig.from_dict(config.to_dict()).given == set(config.to_dict())


def test_data_defaults_fill_only_settings_left_to_their_declared_default():
    config = FitConfig(epochs=3).with_defaults({"epochs": 7, "latent_dim": 9})
    assert (config.epochs, config.latent_dim) == (3, 9)
    assert config.given == {"epochs", "latent_dim"}  # recorded as used, so a resumed run reads the same
    # A setting the model does not take is skipped, not refused: the defaults serve every model.
    assert FitConfig(model="ae").with_defaults({"kl_warmup_steps": 5}) == FitConfig(model="ae")


def test_a_model_with_its_own_meaning_of_a_setting_keeps_its_default():
    # vq_vae's latent_dim counts code positions; a dataset's latent size would make a meaningless grid.
    config = FitConfig(model="vq_vae").with_defaults({"latent_dim": 10, "epochs": 2})
    assert (config.latent_dim, config.epochs) == (16, 2)
    # sprites' β = 0.5 was chosen for the vae; the NVAE measured worse with it and keeps its own β = 1.
    assert FitConfig(model="nvae").with_defaults(SPRITES).beta == 1.0
    assert FitConfig(model="vae").with_defaults(SPRITES).beta == SPRITES["beta"] == 0.5


@pytest.mark.parametrize("name, shape, expected", [
    ("sprites", (64, 64, 1), SPRITES),
    ("fashion_mnist", (28, 28, 1), {}),
    ("mnist", (28, 28, 1), {}),
    ("dsprites", (64, 64, 1), LARGE),
    ("mine.npz", (64, 64, 3), LARGE),
    ("mine.npz", (LARGE_IMAGE, LARGE_IMAGE, 1), LARGE),
    ("mine.npz", (32, 32, 1), {}),
    ("mine.npz", (72, 72, 1), {}),  # not divisible by 16: broadcast-64 cannot take it
])
def test_defaults_per_dataset_and_per_image_size(name, shape, expected):
    assert defaults_for(name, shape) == expected


def test_a_run_records_the_data_defaults_it_used_and_flags_override_them(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, x=tiny_images(16, size=LARGE_IMAGE))
    common = ("fit", "--dataset", path, "--batch-size", 8, "--no-export", "--epochs", 1)
    result = invoke(*common, "--run-dir", tmp_path / "defaults")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "defaults" / "config.json") as f:
        used = json.load(f)
    assert used["architecture"] == SPRITES["architecture"] and used["latent_dim"] == SPRITES["latent_dim"]
    assert used["epochs"] == 1  # given on the command line
    assert used["precision"] in ("float32", "mixed_bfloat16")  # `auto` is recorded as the policy it chose
    result = invoke(*common, "--run-dir", tmp_path / "flags", "--architecture", "mlp", "--latent-dim", 3)
    assert result.exit_code == 0, result.output
    with open(tmp_path / "flags" / "config.json") as f:
        used = json.load(f)
    assert (used["architecture"], used["latent_dim"]) == ("mlp", 3)
    # Running the same command again finds the finished run: the defaults are applied the same way.
    again = invoke(*common, "--run-dir", tmp_path / "defaults")
    assert again.exit_code == 0 and "already complete" in again.output
    assert os.path.exists(tmp_path / "defaults" / "model.keras")


def test_the_readme_lists_the_data_defaults():
    from keras_vae.data.defaults import defaults_table

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")) as f:
        assert defaults_table() in f.read(), "regenerate it with: python -m keras_vae.data.defaults"


def test_fit_help_names_the_data_defaults_beside_the_declared_ones():
    import re

    help_text = re.sub(r"\s+", " ", invoke("fit", "--help").output)
    for declared, name in (("mlp", "architecture"), ("16", "latent_dim")):
        shown = re.search(rf"Default: {declared} \(([^)]*)\)\.", help_text)
        assert shown, help_text
        assert f"sprites: {SPRITES[name]}" in shown.group(1).split(", ")  # one entry per dataset that differs


@pytest.mark.parametrize("native, expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_precision_auto_becomes_the_policy_the_machine_runs_fastest(monkeypatch, native, expected):
    from keras_vae import train

    monkeypatch.setattr(train, "native_bfloat16", lambda: native)
    assert train.resolve_precision(FitConfig(precision="auto")).precision == expected
    assert train.resolve_precision(FitConfig(precision="float32")).precision == "float32"  # a choice is kept


def test_native_bfloat16_reads_the_cpu_flags(monkeypatch, tmp_path):
    import builtins

    from keras_vae import train

    if train.tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU decides by its compute capability")
    real_open = builtins.open
    for flags, expected in (("fpu sse avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                            ("fpu sse avx2 avx512f", False)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open",
                            lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
        assert train.native_bfloat16() is expected
        monkeypatch.setattr(builtins, "open", real_open)


def test_a_prior_refit_asked_for_needs_a_mixture_prior_but_the_datas_default_one_does_not(tiny_npz, tmp_path):
    from types import SimpleNamespace

    from keras_vae.errors import UserError
    from keras_vae.train import with_data_defaults

    sprites = SimpleNamespace(audio=None, image_shape=(64, 64, 1))
    # sprites' own defaults ask for an aggregate refit of their mixture prior; with --prior normal it is moot.
    assert SPRITES["prior_refit"] == "aggregate"
    assert with_data_defaults(FitConfig(prior="normal"), sprites).prior == "normal"
    assert with_data_defaults(FitConfig(prior_refit="em"), sprites).prior == "mog"  # the data's mixture prior
    with pytest.raises(UserError, match="--prior-refit em refits a learned mixture: it needs --prior mog. "
                                        "Received: --prior normal."):
        with_data_defaults(FitConfig(prior="normal", prior_refit="em"), sprites)
    result = invoke("fit", "--dataset", tiny_npz, "--prior-refit", "aggregate", "--epochs", 1, "--no-export",
                    "--run-dir", tmp_path / "run")
    assert result.exit_code == 2 and "it needs --prior mog. Received: --prior normal." in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
