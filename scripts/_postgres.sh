# Sourced by scripts/test (and so by .ci/run): PostgreSQL's server binaries for the `postgres` tests,
# which start a throwaway cluster with initdb/pg_ctl (tests/pgcluster.py). When no
# /usr/lib/postgresql/<version>/bin/initdb exists, installs Debian's `postgresql` package (apt-get as
# root, else through sudo if there is one). Exports SHOAL_PG_BIN, the newest version's bin directory,
# unless it is already set. SHOAL_SKIP_PG_INSTALL=1 installs nothing.
# A failed install only warns: the postgres tests then fail (never skip), saying what is missing.

# pg_bin_dir: the newest /usr/lib/postgresql/<version>/bin with an initdb, or nothing
pg_bin_dir() {
  local initdb
  initdb="$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
  if [ -x "$initdb" ]; then dirname "$initdb"; fi
}

if [ -z "${SHOAL_PG_BIN:-}" ]; then
  if [ -z "$(pg_bin_dir)" ] && [ -z "${SHOAL_SKIP_PG_INSTALL:-}" ]; then
    echo "shoal: installing Debian's postgresql for the PostgreSQL store's tests" >&2
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 \
        || echo "shoal: installing postgresql failed" >&2
    elif command -v sudo >/dev/null 2>&1; then
      (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 \
        || echo "shoal: installing postgresql failed" >&2
    else
      echo "shoal: PostgreSQL's binaries are missing and there is no root or sudo to install them" >&2
    fi
  fi
  SHOAL_PG_BIN="$(pg_bin_dir)"
  if [ -n "$SHOAL_PG_BIN" ]; then export SHOAL_PG_BIN; else unset SHOAL_PG_BIN; fi
fi
