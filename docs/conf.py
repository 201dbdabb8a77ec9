"""Sphinx configuration of the discrete-vae documentation (build: see docs/README.md)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from sphinx.ext.napoleon import Config as NapoleonConfig
from sphinx.ext.napoleon.docstring import GoogleDocstring
from sphinx.util.nodes import make_refnode

import discrete_vae

project = "discrete-vae"
author = "the discrete-vae authors"
copyright = "the discrete-vae authors"
release = version = discrete_vae.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 (with its fonts) served from _static/mathjax: no CDN
    "argparse_reference",  # docs/_ext: the CLI reference, from the parser the command uses
]
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

root_doc = "index"
exclude_patterns = ["_build", "_ext", "README.md"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}

# a warning is an error (-W); nitpicky (-n) also checks every cross-reference
nitpicky = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve, and are checked

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# every public name a module defines, also those its ``__all__`` leaves to the package
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True,
                           "ignore-module-all": True}
python_use_unqualified_type_names = True
add_module_names = False  # ExpConcrete(...), under its module's heading

# types from other libraries: no inventories are fetched (the build is offline), so their references
# are not checked
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|nn|numpy|np|scipy|yaml|submitit|matplotlib|PIL|argparse|pathlib|collections|"
               r"typing|os|dataclasses|enum|abc|concurrent|contextlib|collections\.abc|types)(\..*)?"),
    (r"py:class", r"(Path|Tensor|Any|Callable|Iterator|Iterable|Sequence|Mapping|Module|Optimizer|"
                  r"Distribution|Constraint|Transform|NamedTuple|Enum|Protocol|Generator|Literal|"
                  r"Figure|Axes|ArgumentParser|Namespace|_SubParsersAction|T|TypeVar)"),
    (r"py:obj", r"(Any|T|typing\..*)"),
    (r"py:.*", r"(.*\.)?T"),  # type variables
    (r"py:.*", r"(.*\.)?_[^_].*"),  # private names (base classes, helpers) are not documented
]

html_theme = "furo"
html_title = "discrete-vae"
html_static_path: list[str] = []
# offline: furo's default page loads nothing from other hosts (its fonts are the system's)


# -- docstrings as the code writes them ----------------------------------------------------------------

# a shape such as ``(*batch, K)`` or ``(n, *event)`` in plain docstring text: its star is not emphasis
_SHAPE_STAR = re.compile(r"(?:(?<=\()|(?<=, ))\*(?=[\w.]+[,)])")
# literal, role and math spans, left as they are
_LITERAL = re.compile(r"(``.+?``|:\w+:`[^`]+`|`[^`]+`_?)")
_GOOGLE_SECTION = re.compile(r"^(Args|Returns|Raises):$")


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    if getattr(obj, "__doc__", "") is None and any(_GOOGLE_SECTION.match(line) for line in lines):
        # an override without a docstring shows the one it inherits from torch, written Google-style
        lines[:] = GoogleDocstring(lines, NapoleonConfig(), app, what, name, obj, options).lines()
        return
    for i, line in enumerate(lines):
        parts = _LITERAL.split(line)
        lines[i] = "".join(p if j % 2 else _SHAPE_STAR.sub(r"\\*", p) for j, p in enumerate(parts))


def _locate(path: str, module: str | None = None):
    """The object ``path`` names, absolutely or from ``module``; None if there is none."""
    for full in ([f"{module}.{path}"] if module else []) + [path]:
        parts = full.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            return obj
    return None


def _owner_is_base(names: list[str]) -> str | None:
    """Of several methods of one name, the one on the class all the others' classes derive from."""
    owners = {name: _locate(name.rsplit(".", 1)[0]) for name in names}
    for name, owner in owners.items():
        if isinstance(owner, type) and all(isinstance(o, type) and issubclass(o, owner)
                                           for o in owners.values()):
            return name
    return None


def _resolve_short_names(app, env, node, contnode):
    """A docstring names an object as its module sees it (``ConfigError``, ``RBMPrior.cross_entropy``,
    ``..distributions.smoothing``, ``discrete_vae.distributions.ExpConcrete``): link the one documented
    object whose full name ends so (when several do, those nearest to the referring module, and of
    those the one on the class the others derive from). A module constant without a doc comment is not
    documented: a reference to one that the code has is shown unlinked. Anything else stays a missing
    reference, which -n reports."""
    if node.get("refdomain") != "py":
        return None
    module = node.get("py:module")
    target = node["reftarget"].lstrip(".~")
    domain = env.get_domain("py")
    types = set(domain.objtypes_for_role(node["reftype"]) or ())
    if node["reftype"] == "class":
        types |= {"data", "attribute"}
    if "method" in types:
        types.add("property")
    obj = _locate(target, module)
    canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    found = [name for name, entry in domain.objects.items()
             if (name == target or name.endswith("." + target) or name == canonical)
             and entry.objtype in types and not entry.aliased]
    if len(found) > 1:
        here = (module or "").split(".")

        def shared(name: str) -> int:
            parts = name.split(".")
            return next((i for i, (a, b) in enumerate(zip(here, parts, strict=False)) if a != b),
                        min(len(here), len(parts)))

        best = max(map(shared, found))
        found = [name for name in found if shared(name) == best]
    if len(found) > 1:
        base = _owner_is_base(found)
        found = [base] if base else found
    if len(found) == 1:
        entry = domain.objects[found[0]]
        if entry.objtype == "module":
            return domain._make_module_refnode(app.builder, node["refdoc"], found[0], contnode)
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, found[0])
    if not found and node["reftype"] in ("data", "const", "attr") and obj is not None:
        return contnode
    return None  # none, or ambiguous: the docstring should say which


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("missing-reference", _resolve_short_names)
