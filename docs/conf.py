"""Sphinx configuration: the API reference, generated from the docstrings (autodoc).

Built by scripts/docs.sh with warnings as errors (``-W``); the modules are imported from the
installed package (or from src/ with PYTHONPATH=src after an in-place build).
"""
from __future__ import annotations

import agentconn

project = "agentconn"
author = "agentconn contributors"
release = version = agentconn.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
autodoc_default_options = {"members": True, "show-inheritance": True}
# No network in CI beyond package registries: no intersphinx inventories are fetched.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
# Cross-references to names outside the documented set (the stdlib, httpx, asyncio) stay
# plain text: nitpicky mode is off, but every docstring must parse without a warning.
nitpicky = False
suppress_warnings: list[str] = []
