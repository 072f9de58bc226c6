# Sourced by scripts/test (and so by .ci/run): the real Claude Code CLI for the `real_claude` tests.
# Installs npm's @anthropic-ai/claude-code at the pinned version into .cache/claude-code/<version>/
# (gitignored, reused: nothing is downloaded when it is there) and exports SHOAL_CLAUDE_BIN.
# SHOAL_CLAUDE_CODE_VERSION picks another version; SHOAL_SKIP_CLAUDE_INSTALL=1 installs nothing.
# A failed install only warns: the real_claude tests then fail (under CI=true) or skip, saying why.
claude_version="${SHOAL_CLAUDE_CODE_VERSION:-2.1.332}"
claude_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
claude_prefix="$claude_root/.cache/claude-code/$claude_version"
claude_bin="$claude_prefix/node_modules/.bin/claude"
if [ -z "${SHOAL_CLAUDE_BIN:-}" ] && [ -z "${SHOAL_SKIP_CLAUDE_INSTALL:-}" ]; then
  if [ ! -x "$claude_bin" ]; then
    if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "shoal: installing Debian's npm for the real Claude Code CLI" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm) >&2 || true
    fi
    if command -v npm >/dev/null 2>&1; then
      echo "shoal: installing @anthropic-ai/claude-code@$claude_version into $claude_prefix" >&2
      mkdir -p "$claude_prefix"
      npm install --prefix "$claude_prefix" --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@$claude_version" >&2 || echo "shoal: npm install failed" >&2
    else
      echo "shoal: npm not found: the real_claude tests cannot run" >&2
    fi
  fi
  if [ -x "$claude_bin" ]; then
    export SHOAL_CLAUDE_BIN="$claude_bin"
  fi
fi
