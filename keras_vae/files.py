"""Files written so that a reader never sees half of one, and where the package keeps what it caches."""

import json
import os

CACHE_ENV = "KERAS_VAE_CACHE"


def cache_dir(*parts):
    """The package's cache folder (trained judges and feature networks): $KERAS_VAE_CACHE, else
    $XDG_CACHE_HOME/keras_vae, else ~/.cache/keras_vae; `parts` are joined onto it."""
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "keras_vae")
    return os.path.join(base, *parts)


def write_json(path, values, replace=True):
    """Writes JSON to a temporary name beside `path`, flushed to disk, then renames it to `path`
    (unless `replace` is False: the caller renames it, together with other files). Returns the
    temporary name."""
    temporary = os.fspath(path) + ".tmp"
    with open(temporary, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    if replace:
        os.replace(temporary, path)
    return temporary
