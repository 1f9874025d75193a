"""Build the `_wgcore` Cython extensions.

Nothing is linked at build time: libsodium is reached at run time through the function
pointers of pynacl's bundled cffi module (see src/_wgcore/sodium.pyx), so `pip install .`
needs only pip and a C compiler.

Build switches (environment variables):
  AGENTCONN_CYTHON_ANNOTATE=1   write Cython's HTML annotation next to each .pyx
  AGENTCONN_CYTHON_LINETRACE=1  compile with line tracing (coverage/profiling)
  AGENTCONN_DEBUG=1             -O0 -g and CYTHON_DEBUG-style C assertions
  AGENTCONN_PORTABLE=1          compile the portable POSIX paths even on Linux (udpio: recvmsg/
                                sendmsg loops instead of recvmmsg/sendmmsg + UDP_GRO/UDP_SEGMENT),
                                the code macOS and the BSDs always get; _wgcore.udpio.BACKEND says
                                which was built. The switch is a C macro, so rebuild from clean
                                (`build_ext --inplace --force`, or a fresh `python -m build`).

Portability: the extensions use only POSIX headers and GCC/clang builtins outside udpio's
Linux block (src/_wgcore/udpio.pyx), so they build with any C compiler of those two families
on Linux, macOS and the BSDs.
"""
from __future__ import annotations

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
annotate = os.environ.get("AGENTCONN_CYTHON_ANNOTATE") == "1"
linetrace = os.environ.get("AGENTCONN_CYTHON_LINETRACE") == "1"
debug = os.environ.get("AGENTCONN_DEBUG") == "1"
portable = os.environ.get("AGENTCONN_PORTABLE") == "1"

macros = []
if portable:
    macros += [("AGENTCONN_PORTABLE", "1")]
if linetrace:
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
cflags = ["-O0", "-g"] if debug else ["-O3"]

# Every .pyx under src/_wgcore, subpackages included: src/_wgcore/tcpip/conn.pyx is the
# extension _wgcore.tcpip.conn.
SRC = HERE / "src"
extensions = [
    Extension(
        ".".join(p.relative_to(SRC).with_suffix("").parts),
        [str(p.relative_to(HERE))],
        define_macros=macros,
        extra_compile_args=cflags,
    )
    for p in sorted((SRC / "_wgcore").rglob("*.pyx"))
]

setup(
    # Compile the extensions side by side (setuptools' build_ext --parallel).
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "linetrace": linetrace, "embedsignature": True},
        annotate=annotate,
        include_path=["src"],
    ),
)
