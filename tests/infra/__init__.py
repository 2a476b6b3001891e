"""Real components for the test suite: podman with locally built images, a single-node Slurm.

Everything here installs nothing by hand: the Debian packages come from
``scripts/test.sh`` (APT_PACKAGES); these modules only configure, build and
start. Other tests use them through the fixtures in ``infra.fixtures``.
"""
