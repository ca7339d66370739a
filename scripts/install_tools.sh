#!/usr/bin/env bash
# Security tools whose dependency pins clash with Dagster's (semgrep, checkov) get one isolated venv each,
# under $RELEASE_GRAPH_TOOLS (default <repo>/.tools). release_graph.security finds them there.
# Idempotent: a venv whose marker file names the pinned version is left alone.
#
# Usage: scripts/install_tools.sh [semgrep] [checkov]      (no argument: both)
#        scripts/install_tools.sh --specs                 (print the pinned requirements)
# RG_TOOLS_INSTALLER=pip: install with the venvs' own pip instead of uv (the user-code image does).
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
  local started=$SECONDS
  if [ "${RG_TOOLS_INSTALLER:-uv}" = pip ]; then
    # The user-code image (deploy/Dockerfile): the image's own python3 and pip, which read PIP_NO_INDEX and
    # PIP_FIND_LINKS from the build (scripts/build_user_code_image.py builds it from a wheelhouse). pip
    # compiles bytecode itself.
    test -x "$venv/bin/python" || python3 -m venv "$venv"
    log "$name: installing $spec into $venv with pip"
    "$venv/bin/pip" install -q --no-cache-dir "$spec"
  else
    command -v uv >/dev/null || python3 -m pip install -q uv
    test -x "$venv/bin/python" || uv venv -q --python "$PYTHON_VERSION" "$venv"
    log "$name: installing $spec into $venv"
    # Compiled bytecode halves the tools' start-up (checkov: ~5 s -> ~2 s) when PYTHONDONTWRITEBYTECODE is set.
    UV_COMPILE_BYTECODE=1 uv pip install -q --python "$venv/bin/python" "$spec"
  fi
  rm -f "$venv"/.installed-*
  touch "$marker"
  log "$name: installed in $((SECONDS - started)) s"
}

tools=("$@")
if [ "${tools[0]:-}" = --specs ]; then  # the pinned requirements, one per line (the image's wheelhouse needs them)
  printf '%s\n' "$SEMGREP_SPEC" "$CHECKOV_SPEC"
  exit 0
fi
[ ${#tools[@]} -eq 0 ] && tools=(semgrep checkov)
mkdir -p "$TOOLS"
for tool in "${tools[@]}"; do
  case "$tool" in
    semgrep) install_tool semgrep "$SEMGREP_SPEC" ;;
    checkov) install_tool checkov "$CHECKOV_SPEC" ;;
    *) log "unknown tool '$tool' (expected: semgrep, checkov)"; exit 2 ;;
  esac
done
