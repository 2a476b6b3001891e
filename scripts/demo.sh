#!/usr/bin/env bash
# The main job on the embedded default store: upload a sample folder, edit a
# file, upload again, show the dedup figures, download and verify.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=()
source scripts/venv.sh ""
exec .venv/bin/python scripts/demo.py "$@"
