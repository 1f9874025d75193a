#!/usr/bin/env bash
# The README's "main job": install agentconn into a fresh venv and run the embedded demo —
# two userspace WireGuard peers in one process over loopback UDP, handshaking and pinging.
# Works on a fresh Debian machine as root (installs gcc / python3-venv / Python headers when
# missing); elsewhere it only needs Python >= 3.10 with venv, pip and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc)
"$PY" -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
"$PY" - <<'PYEOF' || need+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PYEOF
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
    else
        echo "demo.sh: please install: ${need[*]}" >&2
        exit 1
    fi
fi

VENV=${AGENTCONN_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"

# Rebuild only when the sources changed: a hash of the source files under src/ (not the
# generated .c and .so), setup.py and pyproject.toml is kept next to the install in the venv.
STAMP="$VENV/.agentconn-demo-stamp"
sources_hash() {
    { find src -type f \( -name '*.py' -o -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' \
           -o -name 'py.typed' \) -print0 | LC_ALL=C sort -z \
        | xargs -0 sha256sum; sha256sum setup.py pyproject.toml; } | sha256sum | cut -d' ' -f1
}
hash=$(sources_hash)
if [ -x "$VENV/bin/agentconn" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ]; then
    echo "demo.sh: agentconn in $VENV is up to date with the sources (no rebuild)" >&2
else
    echo "demo.sh: building and installing agentconn into $VENV (compiles the C extensions;" \
         "a minute or two the first time)..." >&2
    "$VENV/bin/python" -m pip install --upgrade pip 2>&1 | tail -n 1 >&2
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --progress-bar on . >&2
    echo "$hash" > "$STAMP"
fi
exec "$VENV/bin/agentconn" demo "$@"
