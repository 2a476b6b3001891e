# Sourced by demo.sh and test.sh: a project venv at .venv with nerd installed (editable).
# $1: the pip extras to install ("" or "test").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras=${1:+[$1]}
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}" 2>&1 \
  | grep -v "^WARNING: Location 'file:" || true
