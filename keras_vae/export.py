"""SavedModel export in TF Serving's layout, and the native Keras format.

`<export_dir>/<name>/<version>/saved_model.pb` + `variables/`. A version is
written beside its final place under a hidden temporary name and renamed
into place, so a server polling the folder never sees half a model, and an
existing version is never overwritten.
"""

import errno
import os
import re
import shutil
import tempfile

from keras_vae.errors import UserError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name):
    """A model name that stays inside the export folder: letters, digits, '.', '_' and '-', not
    starting with '.' (so no '..', '/abs' or '.')."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise UserError(
            "The model name (--export-name, `keras-vae export --name`, or else the run directory's name) must be "
            "a plain name of letters, digits, '.', '_' and '-' that does not start with '.': it becomes a folder "
            f"under the export directory. Received: {name!r}.")
    return name


def make_readable(path):
    """Gives a folder tree the usual permissions (rwxr-xr-x less the umask), not mkdtemp's 0700,
    so that a server running as another user can read it, and flushes its files to disk."""
    umask = os.umask(0)
    os.umask(umask)
    for root, folders, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            file_path = os.path.join(root, name)
            os.chmod(file_path, 0o666 & ~umask)
            with open(file_path, "rb+") as f:
                os.fsync(f.fileno())


def existing_versions(base):
    if not os.path.isdir(base):
        return []
    return sorted(int(d) for d in os.listdir(base) if d.isdigit() and int(d) > 0)


def next_version(base):
    versions = existing_versions(base)
    return versions[-1] + 1 if versions else 1


def export_saved_model(model, export_dir, name, version=None, max_samples=None):
    """Exports `model`'s serving signatures to `<export_dir>/<name>/<version>`.

    Args:
        model: a built keras_vae model.
        export_dir: the folder TF Serving's `--model_base_path` parent points at.
        name: the model name (TF Serving's `--model_name`).
        version: a positive integer; default the next free version.
        max_samples: the most images one `sample` request may ask for (default `serving.MAX_SAMPLES`).

    Returns:
        The path of the new version folder.

    Raises:
        UserError: the folder cannot be written, or the version exists.
    """
    base = os.path.join(export_dir, check_name(name))
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as error:
        raise UserError(f"Cannot create the export folder {base}: {error.strerror}.") from None
    if not os.access(base, os.W_OK):
        raise UserError(f"The export folder {base} is not writable.")
    if max_samples is not None and (not isinstance(max_samples, int) or isinstance(max_samples, bool)
                                    or max_samples <= 0):
        raise UserError(f"--max-samples must be a positive integer. Received: max_samples={max_samples!r}.")
    chosen = version is None
    version = next_version(base) if chosen else version
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise UserError(f"--version must be a positive integer. Received: version={version!r}.")
    if not chosen and os.path.exists(os.path.join(base, str(version))):
        raise UserError(
            f"Version {version} already exists at {os.path.join(base, str(version))}; versions are never "
            "overwritten. Leave --version out to take the next free one."
        )
    temporary = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base)
    try:
        write_archive(model, temporary, max_samples)
        make_readable(temporary)
        return publish(temporary, base, version, chosen)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def publish(temporary, base, version, chosen):
    """Renames the written version into place. When another export took the number first, a version
    chosen as "the next free one" takes the next number instead; a requested one is refused."""
    while True:
        final = os.path.join(base, str(version))
        try:
            # Atomic, and refused when another export renamed its (never empty) version there first.
            os.rename(temporary, final)
            return final
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not chosen:
                raise UserError(f"Version {version} already exists at {final}; versions are never overwritten.") from None
            version += 1


def write_archive(model, path, max_samples=None):
    """Writes the model's serving signatures as a SavedModel at `path`.

    `keras.export.ExportArchive` lists the model's variables on the saved
    object, which is what lets TF Serving's TF1-style loader restore them.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, function in model.serving_signatures(max_samples).items():
        archive.add_endpoint(name, function)
    archive.write_out(path, verbose=False)


def save_keras_model(model, path, replace=True):
    """Saves the native `.keras` file atomically: to a temporary name, then renamed to `path` (unless
    `replace` is False: the caller renames it, together with other files). Returns the temporary name."""
    temporary = path + ".tmp.keras"
    model.save(temporary)
    if replace:
        os.replace(temporary, path)
    return temporary
