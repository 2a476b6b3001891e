"""Shared fixtures: a real SeaweedFS S3 server for the session, fresh buckets and homes per test."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from seaweed import SeaweedFS  # noqa: E402
from infra.fixtures import podman, python_base_image, slurm, slurm_env  # noqa: E402,F401

from nerdfs.store import S3Options  # noqa: E402

_bucket_seq = itertools.count()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> SeaweedFS:
    """One SeaweedFS for the whole test session (it takes seconds to start)."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(seaweed) -> str:
    """A fresh, empty bucket."""
    return seaweed.make_bucket(f"test-{os.getpid()}-{next(_bucket_seq)}")


@pytest.fixture
def s3_options(seaweed) -> S3Options:
    from seaweed import ACCESS_KEY, SECRET_KEY

    return S3Options(endpoint_url=seaweed.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)


@pytest.fixture
def s3_url(s3_bucket) -> str:
    return f"s3://{s3_bucket}/nerd"
