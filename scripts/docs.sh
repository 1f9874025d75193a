#!/usr/bin/env bash
# Build the API reference (docs/, Sphinx autodoc from the docstrings) into docs/_build/html,
# with every warning an error: a docstring that does not parse fails the build.
#   PYTHON=path/to/python scripts/docs.sh     (default: python3; needs the [docs] extra and
#                                              agentconn importable: installed, or PYTHONPATH=src
#                                              after `python setup.py build_ext --inplace`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
rm -rf docs/_build
exec "$PYTHON" -m sphinx -W --keep-going -q -b html docs docs/_build/html "$@"
