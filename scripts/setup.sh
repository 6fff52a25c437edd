#!/usr/bin/env bash
# Set up the project: system libraries for ffcv, chromium for the report's browser test (optional),
# a Python 3.11 venv in .venv/, and the exact package versions of requirements.lock. Safe to re-run: every step is skipped when already done,
# so a second run takes a few seconds.
#
#   scripts/setup.sh            (or: make setup)
#   PYTHON=/path/to/python3.11 scripts/setup.sh    to pick the interpreter for a new .venv
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements.lock"
STAMP="$VENV/.lock-sha256"
APT_PACKAGES=(pkg-config libturbojpeg0-dev libopencv-dev)

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

# --- (a) system libraries that ffcv compiles against -------------------------------------------
have_system_libs() {
    command -v pkg-config >/dev/null 2>&1 \
        && pkg-config --exists libturbojpeg \
        && pkg-config --exists opencv4
}

if have_system_libs; then
    say "system libraries present (libturbojpeg $(pkg-config --modversion libturbojpeg), opencv4 $(pkg-config --modversion opencv4))"
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing system libraries: ${APT_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${APT_PACKAGES[@]}"
    have_system_libs || die "installed ${APT_PACKAGES[*]} but pkg-config still cannot find libturbojpeg and opencv4"
else
    echo "setup: error: ffcv needs pkg-config, libturbojpeg and opencv4 (found through pkg-config); install them with:" >&2
    echo "    sudo apt-get install -y ${APT_PACKAGES[*]}" >&2
    echo "  (other systems: install pkg-config, libjpeg-turbo and OpenCV 4 development packages), then re-run $0" >&2
    exit 1
fi

# --- (a2) a headless browser for the report's browser test (optional: never fails set-up) ------
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    say "chromium present (headless browser for tests/test_report.py)"
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (headless browser for tests/test_report.py)"
    export DEBIAN_FRONTEND=noninteractive
    # Try without `apt-get update` first (fast when the package lists are fresh).
    if ! apt-get install -y chromium; then
        { apt-get update && apt-get install -y chromium; } \
            || say "could not install chromium; the report's browser test will be skipped"
    fi
else
    say "chromium not found; the report's browser test will be skipped (install it with: sudo apt-get install -y chromium)"
fi

# --- (a3) tcmalloc, the allocator cli.py runs on where it is installed (optional: never fails set-up)
# CPU training steps page-fault their freed activations back in under glibc's malloc; tcmalloc keeps
# them (common/allocator.py; docs/BENCHMARKS.md, "The allocator").
if ldconfig -p 2>/dev/null | grep libtcmalloc_minimal.so.4 >/dev/null; then
    say "tcmalloc present (cli.py runs on it)"
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing tcmalloc (libtcmalloc-minimal4: cli.py runs on it)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y libtcmalloc-minimal4; then
        { apt-get update && apt-get install -y libtcmalloc-minimal4; } \
            || say "could not install tcmalloc; cli.py runs on the C library's malloc (CPU training steps are slower)"
    fi
else
    say "tcmalloc not found; cli.py runs on the C library's malloc (install it with: sudo apt-get install -y libtcmalloc-minimal4)"
fi

# --- (b) a Python 3.11 virtual environment in .venv/ ------------------------------------------
is_py311() { [ "$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "3.11" ]; }

if [ -x "$VENV/bin/python" ]; then
    is_py311 "$VENV/bin/python" \
        || die ".venv/ uses $("$VENV/bin/python" --version 2>&1), not Python 3.11; remove it (rm -rf .venv) and re-run"
    say ".venv/ exists ($("$VENV/bin/python" --version 2>&1))"
else
    PY=""
    if [ -n "${PYTHON:-}" ]; then
        is_py311 "$PYTHON" || die "PYTHON=$PYTHON is not a Python 3.11 interpreter"
    fi
    for candidate in ${PYTHON:-} python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && is_py311 "$candidate"; then
            PY="$candidate"
            break
        fi
    done
    if [ -z "$PY" ]; then
        found=""
        if command -v python3 >/dev/null 2>&1; then found="$(python3 --version 2>&1 | head -n1 || true)"; fi
        die "need Python 3.11 to create .venv/: neither python3.11 nor python3 is 3.11 (python3: ${found:-missing}); install Python 3.11 or set PYTHON=/path/to/python3.11"
    fi
    say "creating .venv/ with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv --clear "$VENV"
fi

# --- (c) the locked packages, only when requirements.lock changed ------------------------------
[ -f "$LOCK" ] || die "requirements.lock is missing"
if command -v sha256sum >/dev/null 2>&1; then
    WANT="$(sha256sum "$LOCK" | cut -d' ' -f1)"
else
    WANT="$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$LOCK")"
fi
HAVE="$(cat "$STAMP" 2>/dev/null || true)"

if [ "$WANT" = "$HAVE" ]; then
    say ".venv/ already matches requirements.lock; nothing to install"
else
    say "installing requirements.lock into .venv/ (first time: a few minutes, ffcv is compiled)"
    # pip builds ffcv in an isolated build environment (setuptools + wheel from the index);
    # verified from a fresh venv, so no --no-build-isolation is needed.
    "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$LOCK"
    echo "$WANT" > "$STAMP.tmp"
    mv -f "$STAMP.tmp" "$STAMP"
    say "done: .venv/ matches requirements.lock"
fi
