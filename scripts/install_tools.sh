#!/usr/bin/env bash
# Security tools whose dependency pins clash with Dagster's (semgrep, checkov) get one isolated venv each,
# under $RELEASE_GRAPH_TOOLS (default <repo>/.tools). release_graph.security finds them there.
# Idempotent: a venv whose marker file names the pinned version is left alone.
#
# Usage: scripts/install_tools.sh [semgrep] [checkov]      (no argument: both)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${RELEASE_GRAPH_TOOLS:-$ROOT/.tools}
PYTHON_VERSION=${RG_TOOLS_PYTHON:-3.11}
# Pinned with ==: a tool upgrade changes which findings block a release, so it is a reviewed change.
SEMGREP_SPEC="semgrep==1.185.0"
CHECKOV_SPEC="checkov==3.3.30"

log() { printf '[install_tools] %s\n' "$*" >&2; }

install_tool() {  # $1 = tool name (also the executable), $2 = requirement spec
  local name=$1 spec=$2
  local venv="$TOOLS/$name-venv"
  local marker="$venv/.installed-$spec"
  if [ -f "$marker" ] && [ -x "$venv/bin/$name" ]; then
    log "$name: $spec already installed in $venv"
    return 0
  fi
  command -v uv >/dev/null || python3 -m pip install -q uv
  test -x "$venv/bin/python" || uv venv -q --python "$PYTHON_VERSION" "$venv"
  log "$name: installing $spec into $venv"
  local started=$SECONDS
  # Compiled bytecode halves the tools' start-up (checkov: ~5 s -> ~2 s) when PYTHONDONTWRITEBYTECODE is set.
  UV_COMPILE_BYTECODE=1 uv pip install -q --python "$venv/bin/python" "$spec"
  rm -f "$venv"/.installed-*
  touch "$marker"
  log "$name: installed in $((SECONDS - started)) s"
}

tools=("$@")
[ ${#tools[@]} -eq 0 ] && tools=(semgrep checkov)
mkdir -p "$TOOLS"
for tool in "${tools[@]}"; do
  case "$tool" in
    semgrep) install_tool semgrep "$SEMGREP_SPEC" ;;
    checkov) install_tool checkov "$CHECKOV_SPEC" ;;
    *) log "unknown tool '$tool' (expected: semgrep, checkov)"; exit 2 ;;
  esac
done
