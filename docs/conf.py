"""Sphinx configuration of the sb3_ppo_kl documentation (build: sphinx-build -W --keep-going docs docs/_build/html)."""

import importlib
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import sb3_ppo_kl  # after the path is set, so that the docs build works from a plain clone too

project = "sb3_ppo_kl"
author = "sb3_ppo_kl contributors"
copyright = "sb3_ppo_kl contributors"
version = sb3_ppo_kl.__version__
release = sb3_ppo_kl.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    # MathJax 3 shipped inside the package and copied into _static/mathjax: formulas render offline
    "sphinx-mathjax-offline",
    # Markdown pages, and the generated benchmarks/RESULTS.md included as it is
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath"]
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
# Types go into the parameter list, so that the signatures stay short enough to read
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": True}

html_theme = "sphinx_rtd_theme"
html_title = f"sb3_ppo_kl {release}"
html_theme_options = {"navigation_depth": 3}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
pygments_style = "sphinx"


def _import_object(path: str) -> object | None:
    """The object at a dotted path such as ``sb3_ppo_kl.KLCoefController``, or None."""
    module_path, attributes = path, []
    while module_path:
        try:
            obj = importlib.import_module(module_path)
        except ImportError:
            module_path, _, attribute = module_path.rpartition(".")
            attributes.insert(0, attribute)
            continue
        for attribute in attributes:
            obj = getattr(obj, attribute, None)
        return obj
    return None


def _resolve_reexported(app, env, node, contnode):
    """
    Link ``sb3_ppo_kl.KLCoefController`` (the public name, re-exported by the package) to where the
    object is documented (``sb3_ppo_kl.common.kl.KLCoefController``), and the other way round.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("sb3_ppo_kl."):
        return None
    obj = _import_object(target)
    if obj is None or not hasattr(obj, "__qualname__"):
        return None
    domain = env.get_domain("py")
    for candidate in (f"{obj.__module__}.{obj.__qualname__}", f"sb3_ppo_kl.{obj.__qualname__}"):
        if candidate != target:
            resolved = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], candidate, node, contnode)
            if resolved is not None:
                return resolved
    return None


def setup(app):
    app.connect("missing-reference", _resolve_reexported)
