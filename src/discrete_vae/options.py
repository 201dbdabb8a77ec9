"""Typed option values: config files are checked like command-line flags.

A config dataclass's fields are annotated ``int``, ``float``, ``bool``, ``str``, ``tuple[int, ...]`` or one of
those ``| None``. :func:`coerce_options` turns the values of a YAML/TOML file (or a stored ``config.yaml``)
into those types and rejects what a flag would reject, with one line that names the key and the type:

- ``int``: an integer, or a number or numeric string with an integral value (``1e5``, which YAML 1.1 reads
  as a string); never ``100.5``, a boolean or ``"abc"``.
- ``float``: a number, or a numeric string; never a boolean. Whether it must be finite or positive is the
  dataclass's own check.
- ``bool``: ``true`` or ``false`` only (not ``"no"``, ``0`` or ``1``).
- ``str``: a string.
- ``tuple[int, ...]``: a list of integers, a bare integer (one entry), or a comma-separated string.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .errors import ConfigError


def field_type(annotation: Any) -> tuple[Any, bool]:
    """``(base type, optional)`` of a dataclass field annotation (a string under ``from __future__``)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})
    optional = False
    if isinstance(annotation, types.UnionType):
        args = typing.get_args(annotation)
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
    return annotation, optional


def _number(key: str, value: Any, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{key} must be {kind}, got {value!r}") from None


def coerce_int(key: str, value: Any) -> int:
    """An integer option value (see the module docstring)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    number = _number(key, value, "an integer")
    if not (math.isfinite(number) and number == int(number)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return int(number)


def coerce_widths(key: str, value: Any) -> tuple[int, ...]:
    """``"512,256"``, ``[512, 256]``, ``64``, ``""``/``"none"``/``"linear"``/``[]`` -> positive widths."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        items: list[Any] = [] if text in ("", "none", "linear") else text.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        raise ConfigError(f"{key} must be a list of integer widths (or one integer), got {value!r}")
    try:
        widths = tuple(coerce_int(key, v) for v in items)
    except ConfigError:
        raise ConfigError(f"{key} must be a list of integer widths (or one integer), got {value!r}") from None
    if any(w < 1 for w in widths):
        raise ConfigError(f"{key} widths must be at least 1, got {value!r}")
    return widths


def coerce_value(key: str, annotation: Any, value: Any) -> Any:
    """``value`` as the type ``annotation`` names, or a one-line :class:`ConfigError` naming ``key``."""
    base, optional = field_type(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be empty")
    if base is int:
        return coerce_int(key, value)
    if base is float:
        return _number(key, value, "a number")
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if typing.get_origin(base) is tuple:
        return coerce_widths(key, value)
    raise TypeError(f"no coercion for the type of {key}: {annotation!r}")


def coerce_options(cls: type, values: dict[str, Any], what: str = "config") -> dict[str, Any]:
    """``values`` (keys with ``-`` or ``_``) checked and converted to the field types of dataclass ``cls``.

    Unknown keys are one :class:`ConfigError` line listing them.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    clean = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(clean) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {what} keys: {', '.join(unknown)}")
    return {k: coerce_value(k, fields[k].type, v) for k, v in clean.items()}


def check_finite(obj: Any) -> None:
    """Every float field of dataclass ``obj`` that holds a value is finite (``inf`` and ``nan`` never are
    meaningful options); one :class:`ConfigError` line otherwise."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


def check_counts(obj: Any, *names: str) -> None:
    """Each field ``names`` of dataclass ``obj`` (default: every ``int`` field but the seed) that holds a
    value is at least 1; one :class:`ConfigError` line naming the flag otherwise."""
    names = names or tuple(f.name for f in dataclasses.fields(obj) if f.type == "int" and f.name != "seed")
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


SEED_MAX = 2**32 - 1  # seeds are 32-bit unsigned integers, as NumPy's; derived seeds stay within 64 bits


def check_seed(flag: str, value: int) -> int:
    """``value`` if it is a valid seed (an integer from 0 to :data:`SEED_MAX`), else one
    :class:`ConfigError` line naming ``flag`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{flag} must be an integer from 0 to {SEED_MAX}, got {value}")
    return value


def method_options(kind: str, name: str, cls: type, values: dict[str, Any]) -> Any:
    """The typed options (dataclass ``cls``) of method ``name`` (a ``kind``: estimator, posterior) from
    ``values`` (names with ``-`` or ``_``), checked like flags; an unknown key is one error naming the
    method's options."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - fields)
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"{kind} {name} has no option {unknown[0]!r} (its options: {known})")
    options = cls(**coerce_options(cls, values))
    check_finite(options)
    return options


def plain(value: Any) -> Any:
    """``value`` with its dataclasses as mappings and its tuples as lists (what YAML and JSON store)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class Sectioned:
    """A config made of sections, each a dataclass of typed fields (``SECTIONS``: section name -> class).

    Every option has one flat name, unique across the sections (a field's ``flag`` metadata renames it):
    flags, config files and sweep specs give flat names; a run folder's ``config.yaml`` stores the
    sections (:meth:`to_dict`). :meth:`from_flat` builds a config from flat names, type-checked like flags.
    """

    SECTIONS: typing.ClassVar[dict[str, type]] = {}

    @classmethod
    def option_fields(cls) -> typing.Iterator[tuple[str, str, dataclasses.Field]]:
        """``(flat name, section, field)`` of every option, in the sections' order."""
        for section, section_cls in cls.SECTIONS.items():
            for f in dataclasses.fields(section_cls):
                yield f.metadata.get("flag", f.name), section, f

    @classmethod
    def flat_names(cls) -> dict[str, tuple[str, str]]:
        """Flat name -> ``(section, field)``."""
        return {name: (section, f.name) for name, section, f in cls.option_fields()}

    @classmethod
    def flat_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with names in ``_`` form and the options inside sections taken out by their flat
        names (what a stored ``config.yaml`` holds becomes what flags give)."""
        out: dict[str, Any] = {}

        def put(key: str, value: Any) -> None:
            if key in out:
                raise ConfigError(f"{key} is given twice (in a section and outside it, or in two forms)")
            out[key] = value

        for key, value in values.items():
            key = str(key).replace("-", "_")
            if key in cls.SECTIONS and isinstance(value, dict):
                names = {f.name: name for name, section, f in cls.option_fields() if section == key}
                for inner, v in value.items():
                    inner = str(inner).replace("-", "_")
                    put(names.get(inner, inner), v)
            else:
                put(key, value)
        return out

    @classmethod
    def from_flat(cls, values: dict[str, Any], what: str = "config") -> Any:
        """The config of flat option names (``values``, already in ``_`` form); an unknown name is one
        error listing them, a value of the wrong type one naming its key."""
        names = cls.flat_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown {what} keys: {', '.join(unknown)}")
        sections: dict[str, dict[str, Any]] = {section: {} for section in cls.SECTIONS}
        for name, value in values.items():
            section, key = names[name]
            sections[section][key] = value
        typed = {section: coerce_options(cls.SECTIONS[section], {k: v for k, v in given.items()
                                                                  if not _untyped(cls.SECTIONS[section], k)})
                 for section, given in sections.items()}
        for section, given in sections.items():  # fields of no flag type (typed options) pass as they are
            typed[section].update({k: v for k, v in given.items() if _untyped(cls.SECTIONS[section], k)})
        return cls(**{section: cls.SECTIONS[section](**given) for section, given in typed.items()})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """The config of a mapping of option names, flat or in sections."""
        return cls.from_flat(cls.flat_values(values))

    @classmethod
    def of(cls, **options: Any) -> Any:
        """The config of options by their flat names, as flags name them: ``TrainConfig.of(latent="8x4",
        steps=200)`` (:meth:`from_dict`)."""
        return cls.from_dict(options)

    def to_dict(self) -> dict[str, Any]:
        """The sections, as ``config.yaml`` stores them (of a method's typed options, those not at their
        defaults)."""
        return {section: {f.name: _stored(getattr(getattr(self, section), f.name))
                          for f in dataclasses.fields(self.SECTIONS[section])}
                for section in self.SECTIONS}

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name."""
        sections = self.to_dict()
        return {name: sections[section][key] for name, (section, key) in self.flat_names().items()}


def _stored(value: Any) -> Any:
    """A field's value as ``config.yaml`` stores it: plain, and a dataclass (typed options) as the mapping of
    its fields that are not at their defaults."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) != f.default}
    return plain(value)


def _untyped(cls: type, name: str) -> bool:
    """Whether field ``name`` of dataclass ``cls`` has no flag type (``Any``: a method's typed options)."""
    return any(f.name == name and f.type in ("Any", Any) for f in dataclasses.fields(cls))
