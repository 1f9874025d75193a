"""Compile a benchmark-only Cython module on first use (STYLE §12: baselines stay out of src/).

The module cimports ``_wgcore``'s .pxd files from wherever ``_wgcore`` is imported (the source
tree, or an installed wheel, which ships them). The generated C and the extension go to
``benchmarks/build/`` and are rebuilt only when the .pyx or a cimported .pxd changes. Needs
Cython and a C compiler, as ``pip install .`` does.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import _wgcore

HERE = Path(__file__).parent
BUILD = HERE / "build"


def load_cython_module(name: str) -> ModuleType:
    """Build (if needed) and import ``benchmarks/<name>.pyx`` as the top-level module `name`."""
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension

    BUILD.mkdir(exist_ok=True)
    source = BUILD / f"{name}.pyx"
    original = HERE / f"{name}.pyx"
    if not source.exists() or source.read_bytes() != original.read_bytes():
        shutil.copyfile(original, source)
    include = str(Path(_wgcore.__file__).parent.parent)
    extensions = cythonize(  # type: ignore[no-untyped-call]
        [Extension(name, [str(source)], extra_compile_args=["-O3"])],
        include_path=[include], compiler_directives={"language_level": "3"}, quiet=True)
    dist = Distribution({"ext_modules": extensions})
    build_ext = dist.get_command_obj("build_ext")
    build_ext.build_lib = str(BUILD)
    build_ext.build_temp = str(BUILD / "temp")
    build_ext.ensure_finalized()
    build_ext.run()
    spec = importlib.util.spec_from_file_location(name, build_ext.get_ext_fullpath(name))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
