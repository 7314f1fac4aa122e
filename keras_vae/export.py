"""SavedModel export in TF Serving's layout, and the native Keras format.

`<export_dir>/<name>/<version>/saved_model.pb` + `variables/`. A version is
written beside its final place under a hidden temporary name and renamed
into place, so a server polling the folder never sees half a model, and an
existing version is never overwritten.
"""

import os
import shutil
import tempfile

from keras_vae.errors import UserError


def existing_versions(base):
    if not os.path.isdir(base):
        return []
    return sorted(int(d) for d in os.listdir(base) if d.isdigit() and int(d) > 0)


def next_version(base):
    versions = existing_versions(base)
    return versions[-1] + 1 if versions else 1


def export_saved_model(model, export_dir, name, version=None):
    """Exports `model`'s serving signatures to `<export_dir>/<name>/<version>`.

    Args:
        model: a built keras_vae model.
        export_dir: the folder TF Serving's `--model_base_path` parent points at.
        name: the model name (TF Serving's `--model_name`).
        version: a positive integer; default the next free version.

    Returns:
        The path of the new version folder.

    Raises:
        UserError: the folder cannot be written, or the version exists.
    """
    base = os.path.join(export_dir, name)
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as error:
        raise UserError(f"Cannot create the export folder {base}: {error.strerror}.") from None
    if not os.access(base, os.W_OK):
        raise UserError(f"The export folder {base} is not writable.")
    if version is None:
        version = next_version(base)
    if not isinstance(version, int) or version <= 0:
        raise UserError(f"--version must be a positive integer. Received: version={version!r}.")
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise UserError(
            f"Version {version} already exists at {final}; versions are never overwritten. "
            "Leave --version out to take the next free one."
        )
    temporary = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base)
    try:
        write_archive(model, temporary)
        os.rename(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def write_archive(model, path):
    """Writes the model's serving signatures as a SavedModel at `path`.

    `keras.export.ExportArchive` lists the model's variables on the saved
    object, which is what lets TF Serving's TF1-style loader restore them.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, function in model.serving_signatures().items():
        archive.add_endpoint(name, function)
    archive.write_out(path, verbose=False)


def save_keras_model(model, path):
    """Saves the native `.keras` file atomically (temporary name, then rename)."""
    temporary = path + ".tmp.keras"
    model.save(temporary)
    os.replace(temporary, path)
