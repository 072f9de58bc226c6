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
  # pip's and setuptools' chatter (editable-install notices) goes to a log shown only on failure
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install --quiet --upgrade pip \
         && "$venv/bin/python" -m pip install --quiet -e "$root${extras:+[$extras]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "shoal: installing into $venv failed (log: $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
