# Sourced by scripts/test (and so by .ci/run): the real Claude Code CLI for the `real_claude` tests.
# Installs npm's @anthropic-ai/claude-code at the pinned version into .cache/claude-code/<version>/
# (gitignored, reused: nothing is downloaded when it is there) and exports SHOAL_CLAUDE_BIN; and an
# older one (2.0.x, a Node.js script) the TUI tests also run against, exported as SHOAL_CLAUDE_BIN_OLD.
# SHOAL_CLAUDE_CODE_VERSION / SHOAL_CLAUDE_CODE_OLD_VERSION pick other versions;
# SHOAL_SKIP_CLAUDE_INSTALL=1 installs nothing.
# A failed install only warns: the real_claude tests then fail (under CI=true) or skip, saying why.
claude_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# claude_install VERSION VARIABLE: install VERSION unless there, export VARIABLE=its claude
claude_install() {
  local version="$1" variable="$2"
  local prefix="$claude_root/.cache/claude-code/$version"
  local bin="$prefix/node_modules/.bin/claude"
  if [ -n "${!variable:-}" ] || [ -n "${SHOAL_SKIP_CLAUDE_INSTALL:-}" ]; then
    return 0
  fi
  if [ ! -x "$bin" ]; then
    if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "shoal: installing Debian's npm for the real Claude Code CLI" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm) >&2 || true
    fi
    if command -v npm >/dev/null 2>&1; then
      echo "shoal: installing @anthropic-ai/claude-code@$version into $prefix" >&2
      mkdir -p "$prefix"
      npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@$version" >&2 || echo "shoal: npm install failed" >&2
    else
      echo "shoal: npm not found: the real_claude tests cannot run" >&2
    fi
  fi
  if [ -x "$bin" ]; then
    export "$variable=$bin"
  fi
}

claude_install "${SHOAL_CLAUDE_CODE_VERSION:-2.1.332}" SHOAL_CLAUDE_BIN
claude_install "${SHOAL_CLAUDE_CODE_OLD_VERSION:-2.0.77}" SHOAL_CLAUDE_BIN_OLD
