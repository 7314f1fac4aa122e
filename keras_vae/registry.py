"""Name -> object registries filled by decorators."""

from keras_vae.errors import UserError


class Registry:
    """A mapping from names to objects, filled with `@registry.register(name)`.

    Args:
        kind: what the registry holds, used in error messages ("dataset").

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("vae")
        ... class VAE: ...
        >>> MODELS.get("vae")
    """

    def __init__(self, kind):
        self.kind = kind
        self._items = {}

    def register(self, name):
        def decorator(obj):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice.")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name):
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"Unknown {self.kind} {name!r}. Valid {self.kind}s: "
                f"{', '.join(self.names())}."
            ) from None

    def names(self):
        return sorted(self._items)

    def __contains__(self, name):
        return name in self._items
