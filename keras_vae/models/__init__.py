"""The model registry: `@register_model(name)`, `get_model_class(name)` and `build_model(config, image_shape)`.

Every module in this package is imported on first use of the registry (not at
package import, so `import keras_vae` stays cheap), so a new model is one new
file here with a `@register_model` class, and nothing else changes.
"""

import ast
import importlib
import os
import pkgutil

from keras_vae.registry import Registry

MODELS = Registry("model")


def register_model(name):
    """Registers a model class under `name` and records the name on it (`cls.model_name`)."""

    def decorator(cls):
        cls.model_name = name
        return MODELS.register(name)(cls)

    return decorator


def _load_builtin_models():
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def get_model_class(name):
    _load_builtin_models()
    return MODELS.get(name)


def model_names():
    _load_builtin_models()
    return MODELS.names()


def build_model(config, image_shape, num_classes=0, total_steps=None):
    """Builds the model a `FitConfig` names, for data of `image_shape` with `num_classes` labels.

    `total_steps`, the run's optimizer steps, resolves schedules that default to a fraction of the run.
    """
    cls = get_model_class(config.model)
    return cls.from_fit_config(config, image_shape, num_classes, total_steps)


def describe_models():
    """{name: first docstring line} of the registered models, read from their source without importing
    them (so `keras-vae models` answers without loading TensorFlow)."""
    found = {}
    for module in pkgutil.iter_modules(__path__):
        with open(os.path.join(__path__[0], module.name + ".py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            for decorator in node.decorator_list:
                if (isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "register_model"
                        and decorator.args and isinstance(decorator.args[0], ast.Constant)):
                    found[decorator.args[0].value] = (ast.get_docstring(node) or "").strip().splitlines()[0]
    return dict(sorted(found.items()))
