"""The model registry: `@register_model(name)` and `build_model(config, image_shape)`."""

from keras_vae.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register


def _load_builtin_models():
    # Imported on first use, not at package import, so `import keras_vae` stays cheap.
    from keras_vae.models import base, family, hierarchical, vq  # noqa: F401


def get_model_class(name):
    _load_builtin_models()
    return MODELS.get(name)


def model_names():
    _load_builtin_models()
    return MODELS.names()


def build_model(config, image_shape, num_classes=0):
    """Builds the model a `FitConfig` names, for data of `image_shape` with `num_classes` labels."""
    cls = get_model_class(config.model)
    return cls.from_fit_config(config, image_shape, num_classes)
