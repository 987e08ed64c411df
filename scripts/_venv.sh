# Shared by scripts/demo and scripts/test: make sure .venv exists with
# taskmesh installed (editable, so the checkout is what runs), using the
# Python given as $PYTHON (default python3), which must be 3.11 or newer.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "taskmesh needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating $venv"
  "$python" -m venv "$venv"
fi
extras=${TASKMESH_EXTRAS:-}
echo "==> installing taskmesh${extras:+[$extras]} into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root${extras:+[$extras]}"
export PATH="$venv/bin:$PATH"
