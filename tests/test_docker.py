"""The Dockerfile, built and run with podman as the README says.

No registry is reachable, so the image is built FROM the locally made
Debian + Python base (``python_base_image`` from tests/infra) passed as the
``BASE`` build arg; pip and apt inside the build reach PyPI and Debian's
mirror through the host network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oauth_provider import CLIENT_ID, Provider

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/nerd-cli:test"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@pytest.fixture(scope="module")
def image(podman, python_base_image) -> str:
    args = ["build", "--network", "host", "--build-arg", f"BASE={python_base_image}", "-t", IMAGE,
            "-f", str(ROOT / "Dockerfile")]
    if CA_BUNDLE.exists():  # this host's CA bundle (with its egress proxy's CA) for pip inside the build
        args += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    t0 = time.monotonic()
    r = podman.run(*args, str(ROOT), check=False, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"\nimage {IMAGE} built in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    yield IMAGE
    podman.run("rmi", "-f", IMAGE, check=False)


def run(podman, *args: str) -> subprocess.CompletedProcess:
    """``podman run --rm ARGS`` without a terminal or stdin, as in CI."""
    return podman.run("run", "--rm", *args, check=False, timeout=300, stdin=subprocess.DEVNULL)


def test_image_runs_nerd_non_interactively(podman, image):
    r = run(podman, image, "--version")
    assert r.returncode == 0 and r.stdout.strip() == "nerd, version 0.1.0", r.stderr
    r = run(podman, image)  # the default command: the help
    assert r.returncode == 0 and "login" in r.stdout and "dataset" in r.stdout
    r = run(podman, image, "login", "--status", "-o", "json")
    assert r.returncode == 8 and json.loads(r.stdout)["error"]["type"] == "AuthError"
    # small: no compiler, no pip in nerd's venv; FUSE (pyfuse3, fusermount3) is there
    r = run(podman, "--entrypoint", "sh", image, "-c",
            "command -v gcc; ls /opt/nerd/bin/pip*; /opt/nerd/bin/python -c 'import pyfuse3' && command -v fusermount3")
    assert r.returncode == 0 and r.stdout.split() == ["/usr/bin/fusermount3"], r.stdout + r.stderr


@pytest.fixture
def provider():
    with Provider("ec") as p:
        p.register("http://localhost:9876/callback")
        yield p


def test_login_state_from_a_mounted_home_or_the_environment(podman, image, provider, tmp_path):
    home = tmp_path / "nerd-home"
    home.mkdir(mode=0o700)
    (home / "config.json").write_text(json.dumps({"auth": {
        "api_endpoint": provider.url, "public_key": provider.public_pem, "client_id": CLIENT_ID}}))
    (home / "session.json").write_text(json.dumps({"oauth": {}, "jwt": provider.mint()}))
    os.chmod(home / "session.json", 0o600)
    mount = ["-v", f"{home}:/root/.nerd"]

    r = run(podman, *mount, image, "login", "--status", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["user"] == "alice" and doc["source"] == "session /root/.nerd/session.json"

    (home / "session.json").unlink()
    r = run(podman, *mount, "-e", f"NERD_JWT={provider.mint(preferred_username='ci-bot')}", image,
            "login", "--status", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["user"] == "ci-bot" and json.loads(r.stdout)["source"] == "NERD_JWT"

    # an expired NERD_JWT is refreshed over the network with NERD_JWT_REFRESH_TOKEN; no file is written
    r = run(podman, *mount, "--network", "host", "-e", f"NERD_JWT={provider.mint(lifetime=-300)}",
            "-e", f"NERD_JWT_REFRESH_TOKEN={provider.refresh_token()}", image, "login", "--status", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["refreshed"] is True
    assert provider.token_requests[-1]["grant_type"] == "refresh_token"
    assert sorted(p.name for p in home.iterdir()) == ["config.json"]


def test_fuse_mount_inside_the_container(podman, image, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    script = ("mkdir -p /mnt/nerd && nerdfs mount /mnt/nerd && mkdir /mnt/nerd/notes"
              " && echo 'written inside a container' > /mnt/nerd/notes/hello.txt && nerdfs umount /mnt/nerd")
    r = run(podman, "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-v", f"{store}:/store",
            "-e", "NERD_STORE=file:///store", "--entrypoint", "sh", image, "-c", script)
    assert r.returncode == 0, r.stdout + r.stderr
    # the snapshot it made is in the store on the host: download it with the host's nerd
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NERD_")},
           "NERD_HOME": str(tmp_path / "home"), "NERD_STORE": f"file://{store}"}
    out = tmp_path / "out"
    d = subprocess.run([sys.executable, "-m", "nerdcli", "dataset", "download", "notes", str(out)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert d.returncode == 0, d.stderr
    assert (out / "hello.txt").read_text() == "written inside a container\n"
