"""Session fixtures for real containers and a real Slurm; tests/conftest.py imports them.

- ``podman``: a ``Podman`` (``.env`` with CONTAINERS_CONF, ``.image`` = the busybox
  test image, ``.run(*args)``). CONTAINERS_CONF is also exported to this process's
  environment for the session, so every podman the tests start (nerd, workers,
  ``working task``) uses runc and the host's ulimits.
- ``python_base_image``: the name of the Debian + Python 3 image (built once per machine).
- ``slurm``: a started ``Slurm`` (``.conf``, ``.env`` with SLURM_CONF, ``.rest_url``,
  ``.rest_endpoint``, ``.token(username, lifespan)``, ``.run(*cmd)``), stopped at the end.
- ``slurm_env``: per test, SLURM_CONF exported to this process (for in-process
  backends and the subprocesses they start).
"""

from __future__ import annotations

import os

import pytest

from infra.podman import Podman
from infra.slurm import Slurm


@pytest.fixture(scope="session")
def podman(tmp_path_factory) -> Podman:
    engine = Podman.setup(tmp_path_factory.mktemp("podman"))
    engine.ensure_busybox_image()
    saved = os.environ.get("CONTAINERS_CONF")
    os.environ.update(engine.env)
    yield engine
    if saved is None:
        os.environ.pop("CONTAINERS_CONF", None)
    else:
        os.environ["CONTAINERS_CONF"] = saved


@pytest.fixture(scope="session")
def python_base_image(podman) -> str:
    return podman.ensure_python_base_image()


@pytest.fixture(scope="session")
def slurm() -> Slurm:
    cluster = Slurm().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_env(slurm, monkeypatch) -> Slurm:
    for key, value in slurm.env.items():
        monkeypatch.setenv(key, value)
    return slurm
