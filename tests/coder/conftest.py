"""Make the test helpers (controlplane.py, derp_pair.py) importable as ``from controlplane import
...`` / ``from derp_pair import ...`` whatever the pytest import mode or PYTHONPATH."""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
