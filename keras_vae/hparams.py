"""Hyperparameters, each declared once.

A `Hyperparameter` names a setting, its type, default, allowed values, help
text and paper reference. Everything else follows from that one declaration:
`FitConfig` (the run configuration and its validation), the `keras-vae fit`
options and their help, a model's constructor arguments and `get_config`,
and the README's flag table (`flag_table`).

Run-level settings (data, optimization, distribution, outputs) are declared
in `keras_vae.config`; each model class declares its own in its
`hyperparameters` attribute, and inherits its parent's.

Example:
    >>> latent_dim = Hyperparameter("latent_dim", int, 16, "Size of the code.", minimum=1)
    >>> latent_dim.check(8)
    8
    >>> latent_dim.check(0)   # UserError: --latent-dim must be a positive integer. Received: latent_dim=0.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Tuple

from keras_vae.errors import UserError

TYPES = (int, float, str, bool)


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """One setting: its declaration and its validation.

    Args:
        name: the config key and constructor argument (the flag is `--name-with-dashes`).
        type: int, float, str or bool.
        default: the value when the setting is not given.
        help: one line for `--help` and the README.
        choices: the allowed strings, for a str setting.
        minimum, maximum: the allowed range of a number (inclusive, unless
            `open_minimum` / `open_maximum`).
        nullable: None is allowed (its meaning belongs in `help`).
        reference: the paper the setting comes from.
        attribute: the model attribute that holds the value, when `name` is
            taken by a method (`likelihood`, `prior`).
        parse: for a str setting with a syntax of its own (such as "8,5,5,5"):
            a function that reads the value and raises ValueError with a
            message when it is malformed.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Optional[Tuple[str, ...]] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    open_minimum: bool = False
    open_maximum: bool = False
    nullable: bool = False
    reference: str = ""
    attribute: Optional[str] = None
    parse: Optional[Callable[[str], Any]] = None

    def __post_init__(self):
        if self.type not in TYPES:
            raise TypeError(f"Hyperparameter {self.name}: type must be one of {TYPES}. Received: {self.type!r}.")
        if self.default is not None or not self.nullable:
            try:
                self.check(self.default)
            except UserError as error:  # a declaration whose default breaks its own rule is a bug
                raise TypeError(f"Hyperparameter {self.name}: its default breaks its rule. {error}") from None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    @property
    def attribute_name(self):
        return self.attribute or self.name

    def describe(self):
        """What a valid value is, in words ("a positive integer", "one of a, b")."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is bool:
            return "true or false"
        if self.type is str:
            return "a non-empty string"
        noun = "integer" if self.type is int else "number"
        low, high = self.minimum, self.maximum
        if high is None and (low == 0 and self.open_minimum or low == 1 and self.type is int):
            return f"a positive {noun}"
        if high is None and low == 0:
            return f"a non-negative {noun}"
        a_noun = "an integer" if self.type is int else "a number"
        if low is None and high is None:
            return "a finite number" if self.type is float else a_noun
        if high is None:
            return f"{a_noun} {'>' if self.open_minimum else '≥'} {low}"
        if low is None:
            return f"{a_noun} {'<' if self.open_maximum else '≤'} {high}"
        if self.open_minimum and self.open_maximum:
            return f"{a_noun} strictly between {low} and {high}"
        return f"{a_noun} in {'(' if self.open_minimum else '['}{low}, {high}{')' if self.open_maximum else ']'}"

    def check(self, value):
        """`value` if it is valid (ints become floats for a float setting); else a UserError."""
        if value is None and self.nullable:
            return None
        if self.type is bool:
            valid = isinstance(value, bool)
        elif self.type is int:
            valid = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if valid else value
        else:
            valid = isinstance(value, str) and value != "" and (not self.choices or value in self.choices)
        if valid and self.type in (int, float):
            valid = self._in_range(value)
        if valid and self.parse is not None:
            try:
                self.parse(value)
            except ValueError as error:
                raise UserError(str(error)) from None
        if not valid:
            allowed = self.describe() + (" (or null)" if self.nullable else "")
            raise UserError(f"{self.flag} must be {allowed}. Received: {self.name}={value!r}.")
        return value

    def _in_range(self, value):
        if self.minimum is not None and (value < self.minimum or self.open_minimum and value == self.minimum):
            return False
        if self.maximum is not None and (value > self.maximum or self.open_maximum and value == self.maximum):
            return False
        return True


def by_name(hyperparameters):
    """{name: Hyperparameter}; a later declaration of a name replaces an earlier one."""
    return {h.name: h for h in hyperparameters}


def flag_table(rows):
    """A Markdown table of (hyperparameter, where it applies) rows, for the README."""
    lines = ["| flag | default | allowed | applies to | meaning |", "|---|---|---|---|---|"]
    for hyperparameter, applies_to in rows:
        default = "null" if hyperparameter.default is None else repr(hyperparameter.default).strip("'")
        meaning = hyperparameter.help + (f" ({hyperparameter.reference})" if hyperparameter.reference else "")
        lines.append(f"| `{hyperparameter.flag}` | {default} | {hyperparameter.describe()} | {applies_to} | "
                     f"{meaning} |")
    return "\n".join(lines)
