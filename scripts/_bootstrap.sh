# Sourced by scripts/serve and scripts/test: make a virtualenv in .venv with Shoal installed.
# Idempotent and quiet when everything is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SHOAL_VENV:-$root/.venv}"
extras="${1:-}"
stamp="$venv/.shoal-installed${extras:+-$extras}"
if [ ! -x "$venv/bin/python" ]; then
  echo "shoal: creating virtualenv in $venv" >&2
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "shoal: installing shoal${extras:+[$extras]} into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -e "$root${extras:+[$extras]}" >&2
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
