"""``dvae list``: the registries (methods, posteriors, estimators, priors, datasets, presets, structs) and
what each entry sets or takes."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from .flags import value_text


def _registries() -> dict[str, Any]:
    from .data import DATASETS
    from .estimators import ESTIMATORS
    from .methods import METHODS
    from .posteriors import POSTERIORS
    from .presets import PRESETS, STRUCTS
    from .priors import PRIORS

    return {"models": METHODS, "posteriors": POSTERIORS, "estimators": ESTIMATORS, "priors": PRIORS,
            "datasets": DATASETS, "presets": PRESETS, "structs": STRUCTS}


LISTS = ("models", "posteriors", "estimators", "priors", "datasets", "presets", "structs")


def _described(what: str, registry: Any) -> dict[str, dict[str, Any]]:
    """What each method sets; each posterior's family and options; what each estimator supports and its
    options; each prior's options."""
    if what == "models":
        return {name: {"posterior": m.posterior, "estimator": m.estimator, **m.defaults}
                for name in registry.names() for m in [registry.get(name)]}
    described = {}
    for name in registry.names():
        entry = registry.get(name)
        lead = ({"family": entry.family} if what == "posteriors" else {} if what == "priors" else
                {"supports": list(entry.supports), "unbiased": entry.unbiased,
                 **{k: getattr(entry, k) for k in ("cost", "unsupported") if getattr(entry, k, "")}})
        described[name] = {**lead, **{f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                                      for f in fields(entry.Options)}}
    return described


def list_registries(what: str | None, as_json: bool) -> dict[str, Any] | None:
    """``dvae list [WHAT]``: the names in every registry, or one registry with what each entry sets or
    takes; a dict for ``--json``, else printed (None)."""
    registries = _registries()
    if what in ("presets", "structs"):  # what each sets
        listed: Any = {name: {k: list(v) if isinstance(v, tuple) else v for k, v in registries[what].get(
            name).items()} for name in registries[what].names()}
    elif what in ("models", "posteriors", "estimators", "priors"):
        listed = _described(what, registries[what])
    elif what:
        listed = registries[what].names()
    else:
        listed = {kind: registries[kind].names() for kind in LISTS}
    if as_json:
        return listed if isinstance(listed, dict) else {what: listed}
    if isinstance(listed, list):
        print("\n".join(listed))
    elif what:  # name, then its settings
        width = max(map(len, listed))
        for name, settings in listed.items():
            settings = dict(settings)
            lead = ""
            if what == "estimators":  # what it supports, then its options (as flags)
                notes = "".join(f"{settings.pop(k)}; " for k in ("cost", "unsupported") if k in settings)
                lead = (f"{', '.join(settings.pop('supports'))}; "
                        f"{'unbiased' if settings.pop('unbiased') else 'biased'}; {notes}")
            elif what == "posteriors":
                lead = f"{settings.pop('family')}; "
            text = " ".join(f"--{k.replace('_', '-')} {value_text(v)}" for k, v in settings.items())
            print(f"{name:<{width}}  {lead}{text}".rstrip("; "))
    else:
        width = max(map(len, listed))
        for kind, names in listed.items():
            print(f"{kind:<{width}}  {', '.join(names)}")
        print("\n`dvae list models|presets|structs` show what each sets, `dvae list estimators` what each "
              "supports; --json for scripts")
    return None
