"""Files written so that a reader never sees half of one."""

import json
import os


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
