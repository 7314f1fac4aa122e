"""The package's shape: no import cycles, short functions, each hyperparameter declared once."""

import ast
import glob
import math
import os
import re

import keras
import numpy as np
import pytest

from conftest import REPO, invoke
from keras_vae.config import RUN_HYPERPARAMETERS, FitConfig, flag_rows
from keras_vae.errors import UserError
from keras_vae.hparams import Hyperparameter, flag_table
from keras_vae.models import get_model_class, model_names

PACKAGE = os.path.join(REPO, "keras_vae")
MAX_FUNCTION_LINES = 60


def package_modules():
    """{module name: path} of every module in keras_vae."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path, modules):
    """The keras_vae modules that `path` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


def find_cycle(graph):
    """One cycle of the directed graph as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle_even_through_function_level_imports():
    modules = package_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    assert "keras_vae.config" in graph["keras_vae.runs"]  # the walk sees imports
    assert "keras_vae.models" in graph["keras_vae.config"]  # ... including those inside functions
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_library_function_is_longer_than_sixty_lines():
    long = []
    for path in package_modules().values():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body  # code, not docstring
                lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{os.path.relpath(path, REPO)}:{node.name} ({lines} lines)")
    assert not long


@pytest.mark.parametrize("module, limit", [("beta_tc_vae", 40), ("dip_vae", 40)])
def test_a_loss_variant_is_one_small_file(module, limit):
    with open(os.path.join(PACKAGE, "models", module + ".py")) as f:
        assert len(f.read().splitlines()) <= limit


def test_hyperparameters_check_type_range_and_finiteness():
    rate = Hyperparameter("learning_rate", float, 1e-3, "", minimum=0, open_minimum=True)
    assert rate.check(1) == 1.0 and isinstance(rate.check(1), float)
    for bad in (0, -1.0, math.nan, math.inf, True, "0.1", None):
        with pytest.raises(UserError, match=f"--learning-rate must be a positive number. Received: learning_rate={bad!r}"):
            rate.check(bad)
    seed = RUN_HYPERPARAMETERS["seed"]
    for bad in (1.0, True, -1, 2**31):
        with pytest.raises(UserError, match="--seed must be an integer in \\[0, 2147483647\\]"):
            seed.check(bad)
    with pytest.raises(UserError, match="--export must be true or false. Received: export='false'"):
        FitConfig(export="false")
    with pytest.raises(UserError, match="strictly between 0 and 1. Received: validation_split=1.0"):
        FitConfig(validation_split=1.0)
    with pytest.raises(TypeError):
        Hyperparameter("broken", int, -1, "", minimum=0)  # a default that breaks its own rule


def test_a_flag_the_model_does_not_use_is_refused_naming_the_models_that_use_it():
    with pytest.raises(UserError, match="--beta is not used by the iwae model; it is a hyperparameter of "
                                        "beta_tc_vae, beta_vae, cvae, delta_vae, dip_vae, hvae, nvae, vae"):
        FitConfig(model="iwae", beta=2.0)
    with pytest.raises(UserError, match="--codebook-size is not used by the vae model; .* of vq_vae"):
        FitConfig(codebook_size=8)
    with pytest.raises(UserError, match="--prior is not used by the cvae model"):
        FitConfig(model="cvae", prior="mog")
    result = invoke("fit", "--model", "ae", "--free-bits", 1)
    assert result.exit_code == 2 and "--free-bits is not used by the ae model" in result.output


@pytest.mark.parametrize("name", model_names())
def test_a_models_config_get_config_and_constructor_follow_its_declarations(name):
    cls = get_model_class(name)
    declared = cls.all_hyperparameters()
    config = FitConfig(model=name)
    assert set(config.to_dict()) == set(RUN_HYPERPARAMETERS) | set(declared)
    assert config.model_hyperparameters() == {k: h.default for k, h in declared.items()}
    model = cls.from_fit_config(config, (8, 8, 1), num_classes=3, total_steps=10)
    saved = model.get_config()
    assert set(declared) <= set(saved)
    restored = cls.from_config(saved)
    assert {k: getattr(restored, h.attribute_name) for k, h in declared.items()} == \
           {k: getattr(model, h.attribute_name) for k, h in declared.items()}


def test_config_is_immutable_and_replace_validates():
    config = FitConfig(epochs=3)
    with pytest.raises(AttributeError):
        config.epochs = 4
    assert config.replace(epochs=4).epochs == 4 and config.epochs == 3
    with pytest.raises(UserError, match="Received: epochs=0"):
        config.replace(epochs=0)
    assert FitConfig.from_dict(config.to_dict()) == config


def test_every_declared_hyperparameter_is_a_fit_option_with_its_help():
    help_text = re.sub(r"\s+", " ", invoke("fit", "--help").output)
    for hyperparameter, _ in flag_rows():
        assert hyperparameter.flag in help_text
        assert hyperparameter.help.split(" (")[0][:40] in help_text


def test_the_readme_flag_table_is_generated_from_the_declarations():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert flag_table(flag_rows()) in readme, "regenerate it with: python -m keras_vae.config"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "benchmarks", "reproduce", "*.json"))),
                         ids=os.path.basename)
def test_every_reproduction_config_is_a_fit_config_of_the_papers_networks(path):
    """`keras-vae fit --config FILE` reads each row of the reproduction table; its model builds, with the
    architecture and latent size the row names."""
    from keras_vae.cli import merge_config
    from keras_vae.models import build_model

    config = merge_config(path, {"data_dir": "unused"})
    assert config.dataset in ("fashion_mnist", "sprites")
    side = 28 if config.dataset == "fashion_mnist" else 64
    model = build_model(config, (side, side, 1), total_steps=10)
    loc, scale = model.encode(np.zeros((2, side, side, 1), np.float32))[:2]
    assert loc.shape == scale.shape == (2, model.code_dim)
    if config.model == "nvae":  # maps from 1/4 of the (padded) side down, halving per scale
        finest = (32 if side == 28 else side) // 4
        maps = sum((finest // 2**k) ** 2 for k in range(config.scales))
        assert model.code_dim == config.groups_per_scale * config.latent_channels * maps
        return
    assert model.code_dim == config.latent_dim * (2 if config.model == "hvae" else 1)
    if config.dataset == "sprites":  # the single-layer rows beside the sprites NVAE
        assert config.architecture == "conv"
        return
    hidden = [layer for layer in model.encoder.layers if not isinstance(layer, keras.layers.Flatten)][:-1]
    if config.architecture == "mlp-gated":  # Tomczak & Welling's 2 × 300 gated units
        assert [(type(h).__name__, h.units) for h in hidden] == [("GatedDense", 300)] * 2
    else:  # Burda et al.'s 2 × 200 tanh units
        assert config.architecture == "mlp-200-tanh"
        assert [(h.units, h.activation.__name__) for h in hidden] == [(200, "tanh")] * 2
