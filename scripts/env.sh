# Shared by scripts/quickstart, scripts/test and scripts/benchmark: create .venv and install the
# package with the extras named in $1, unless it is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=".venv/.installed-$1"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python -m pip install --quiet --upgrade pip
    # torch 2.13.0 is pinned so pip takes the CPU build instead of a multi-GB CUDA one.
    python -m pip install --quiet "torch==2.13.0"
    python -m pip install --quiet -e ".[$1]"
    touch "$stamp"
fi
