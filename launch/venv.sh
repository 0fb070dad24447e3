#!/usr/bin/env bash
# Creates (or reuses) the virtualenv .venv of this checkout and installs the package into it, with
# optional extras; on Debian/Ubuntu without python3-venv it installs that first (apt-get, as root
# directly or through sudo).
#
#   launch/venv.sh [--dry-run] [EXTRAS]        e.g. launch/venv.sh test
#   VENV=DIR launch/venv.sh                    another virtualenv directory
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
if [[ "$here" == "${BASH_SOURCE[0]}" ]]; then here=.; fi
source "$here/common.sh"
REPO="$(cd "$here/.." && pwd)"
VENV="$(absolute "${VENV:-$REPO/.venv}")"
cd "$REPO"
if needs_python_venv "$VENV"; then apt_install python3-venv; fi
setup_venv "$VENV" "${ARGS[0]:-}"
