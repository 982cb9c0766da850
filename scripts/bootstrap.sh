# Sourced by scripts/quickstart.sh and scripts/test.sh (and so by .ci/run): installs what is
# missing, then sets PY to the interpreter to run with. Not meant to be run by itself.
#
# Knobs (environment variables; the defaults give a CPU-only install in ./.venv):
#   VENV         where the virtual environment lives (default .venv, made with $PYTHON when absent);
#                VENV=system installs into $PYTHON itself instead (a container, a CI image)
#   PYTHON       interpreter that makes the venv (default python3; Python >= 3.10)
#   TORCH_SPEC   the torch requirement, installed first (default torch==2.13.0)
#   TORCH_INDEX  where torch comes from (default https://download.pytorch.org/whl/cpu, the CPU
#                build); https://download.pytorch.org/whl/cu128 (or cu126, ...) for a CUDA build;
#                TORCH_INDEX=pypi for pip's configured index (PyPI's Linux x86_64 torch is a CUDA
#                build, ~2.5 GB more; where pip's find-links hold a local CPU wheel it takes that)
#   INSTALL      INSTALL=0 skips every pip step and runs with what is there
#   VENV_ON_PATH VENV_ON_PATH=0 leaves PATH alone; by default the venv's bin/ goes first on PATH
#                for what the script runs, so a `python` or `ray` called by name is the venv's
#                whether or not the venv is activated (.ci/run sets 0 to prove the suite needs
#                no such help)
#
# torch goes first and from its own index: the package's `torch` requirement, left to PyPI, would
# pull the multi-GB CUDA build. A rerun with the same pyproject.toml, extras and torch choice
# installs nothing (the venv keeps a stamp); an installed torch that meets TORCH_SPEC is kept.

jntk_bootstrap() {
    _jntk_install "$@" || return 1
    if [ "${VENV:-.venv}" != system ] && [ "${VENV_ON_PATH:-1}" != 0 ]; then
        PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
        export PATH
    fi
}

_jntk_install() {
    local extras="$1"   # "" or "[dev]"
    local venv="${VENV:-.venv}"
    local python="${PYTHON:-python3}"
    local torch_spec="${TORCH_SPEC:-torch==2.13.0}"
    local torch_index="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"

    if [ "$venv" = system ]; then
        PY="$(command -v "$python")" || { echo "bootstrap: no $python on PATH (set PYTHON)" >&2; return 1; }
    else
        PY="$venv/bin/python"
    fi
    if [ "${INSTALL:-1}" = 0 ]; then
        [ -x "$PY" ] || { echo "bootstrap: INSTALL=0 but no interpreter at $PY" >&2; return 1; }
        return 0
    fi

    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || {
        echo "bootstrap: $python is missing or older than Python 3.10 (set PYTHON=python3.11, ...)" >&2
        return 1
    }
    if [ "$venv" != system ] && [ ! -x "$PY" ]; then
        echo "bootstrap: creating the virtual environment $venv with $("$python" --version 2>&1)"
        "$python" -m venv "$venv" || return 1
    fi

    # A venv remembers what went into it: .jntk-installed-base / -dev hold a hash of pyproject.toml
    # and the torch choice; a [dev] install also serves the plain one.
    local kind=base want=""
    [ -z "$extras" ] || kind=dev
    if [ "$venv" != system ]; then
        want="$( (cat pyproject.toml; echo "torch=$torch_spec index=$torch_index") | "$PY" -c \
            'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
        for k in dev $kind; do
            if [ "$(cat "$venv/.jntk-installed-$k" 2>/dev/null)" = "$want" ]; then
                return 0
            fi
        done
    fi

    local index_args=()
    [ "$torch_index" = pypi ] || index_args=(--index-url "$torch_index")
    # torch alone from its index (--no-deps: its own requirements -- filelock, sympy, ... -- come
    # from pip's usual index in the next step, where pip reads them off the installed torch).
    echo "bootstrap: $torch_spec from ${torch_index}"
    "$PY" -m pip install --progress-bar off --no-deps "$torch_spec" ${index_args[@]+"${index_args[@]}"} || return 1
    echo "bootstrap: this package, editable, with extras '${extras:-none}'"
    "$PY" -m pip install --progress-bar off -e ".$extras" || return 1

    [ "$venv" = system ] || echo "$want" > "$venv/.jntk-installed-$kind"
}
