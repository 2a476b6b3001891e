"""podman with runc and locally built images (no registry is reachable in CI).

- ``Podman.setup(conf_dir)`` writes a containers.conf (runc; ulimits the host
  allows: crun and podman's default ulimits fail on these machines) and returns
  an object whose ``env`` has ``CONTAINERS_CONF``.
- ``ensure_busybox_image`` builds ``localhost/nerd-busybox:test`` from Debian's
  static busybox (a few MB, about a second).
- ``ensure_python_base_image`` builds ``localhost/nerd-python-base:test``, a
  debootstrap'ed Debian with python3/venv/pip and fuse3 (minutes, once per
  machine: images live in podman's storage and are reused while they exist).

Builds hold a host-wide lock so parallel test sessions do not build twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX_IMAGE = "localhost/nerd-busybox:test"
PYTHON_BASE_IMAGE = "localhost/nerd-python-base:test"
PYTHON_BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "fuse3")
LOCK_PATH = Path(tempfile.gettempdir()) / "nerd-test-images.lock"


def _limit(kind: int, want: int) -> int:
    """``want``, lowered to the hard limit this host allows (containers cannot exceed it)."""
    hard = resource.getrlimit(kind)[1]
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


def containers_conf() -> str:
    nofile = _limit(resource.RLIMIT_NOFILE, 20000)
    nproc = _limit(resource.RLIMIT_NPROC, 32768)
    return (
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "\n[engine]\n"
        'runtime = "runc"\n'
    )


@contextlib.contextmanager
def _host_lock():
    """Serialise image builds across concurrent test sessions on this machine."""
    with open(LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Podman:
    """A usable podman: ``env`` (merge into a subprocess env), ``image`` (the busybox test image)."""

    conf_path: Path
    image: str = BUSYBOX_IMAGE
    env: dict[str, str] = field(default_factory=dict)
    build_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def setup(cls, conf_dir: str | os.PathLike) -> "Podman":
        for tool in ("podman", "runc"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found: scripts/test.sh installs it (APT_PACKAGES)")
        conf_dir = Path(conf_dir)
        conf_dir.mkdir(parents=True, exist_ok=True)
        conf_path = conf_dir / "containers.conf"
        conf_path.write_text(containers_conf())
        return cls(conf_path=conf_path, env={"CONTAINERS_CONF": str(conf_path)})

    def full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def run(self, *args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        """``podman ARGS`` with this configuration; text output captured."""
        return subprocess.run(["podman", *args], env=self.full_env(), check=check, timeout=timeout,
                              capture_output=True, text=True, **kw)

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def import_rootfs(self, rootfs: Path, name: str, *changes: str) -> None:
        """``podman import`` a directory tree (tarred on the fly) as image ``name``."""
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", "-", "."],
                               stdout=subprocess.PIPE)
        cmd = ["podman", "import"]
        for change in changes:
            cmd += ["--change", change]
        try:
            subprocess.run([*cmd, "-", name], stdin=tar.stdout, env=self.full_env(), check=True,
                           capture_output=True, timeout=900)
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise RuntimeError(f"tar of {rootfs} failed")

    def ensure_busybox_image(self, name: str = BUSYBOX_IMAGE) -> str:
        """Build the busybox test image unless it exists; returns its name."""
        with _host_lock():
            if self.image_exists(name):
                return name
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="nerd-busybox-") as tmp:
                rootfs = Path(tmp) / "rootfs"
                (rootfs / "bin").mkdir(parents=True)
                shutil.copy2(_busybox_static(Path(tmp)), rootfs / "bin" / "busybox")
                applets = subprocess.run([str(rootfs / "bin" / "busybox"), "--list-full"], check=True,
                                         capture_output=True, text=True).stdout.split()
                for applet in applets:
                    link = rootfs / applet
                    if link.exists() or link.is_symlink():
                        continue
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to("/bin/busybox")
                for d in ("tmp", "etc", "root", "proc", "sys", "dev"):
                    (rootfs / d).mkdir(exist_ok=True)
                (rootfs / "tmp").chmod(0o1777)
                (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                                        "nobody:x:65534:65534:nobody:/:/bin/sh\n")
                (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
                self.import_rootfs(rootfs, name, "CMD /bin/sh", "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            self.build_seconds[name] = time.monotonic() - t0
            return name

    def ensure_python_base_image(self, name: str = PYTHON_BASE_IMAGE) -> str:
        """Build the Debian + Python 3 base image with debootstrap unless it exists; returns its name."""
        with _host_lock():
            if self.image_exists(name):
                return name
            if shutil.which("debootstrap") is None:
                raise RuntimeError("debootstrap not found: scripts/test.sh installs it (APT_PACKAGES)")
            t0 = time.monotonic()
            suite = _codename()
            with tempfile.TemporaryDirectory(prefix="nerd-pybase-", dir="/var/tmp") as tmp:
                rootfs = Path(tmp) / "rootfs"
                proc = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(PYTHON_BASE_PACKAGES)}",
                     suite, str(rootfs), debian_mirror(suite)],
                    capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    log = rootfs / "debootstrap" / "debootstrap.log"
                    detail = log.read_text()[-3000:] if log.exists() else proc.stderr[-3000:]
                    raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{detail}")
                # Keep the image small: apt lists and the package cache are not needed to run Python.
                for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    shutil.rmtree(rootfs / junk, ignore_errors=True)
                    (rootfs / junk).mkdir(parents=True, exist_ok=True)
                self.import_rootfs(rootfs, name, "CMD /bin/bash",
                                   "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                   "ENV LANG=C.UTF-8")
            self.build_seconds[name] = time.monotonic() - t0
            return name


def _busybox_static(tmp: Path) -> Path:
    """The static busybox binary: the installed busybox-static package's, else Debian's .deb unpacked."""
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "busybox-static"],
                               capture_output=True, text=True)
    if "install ok installed" in installed.stdout and Path("/bin/busybox").exists():
        return Path("/bin/busybox")
    subprocess.run(["apt-get", "download", "busybox-static"], cwd=tmp, check=True, capture_output=True)
    deb = next(tmp.glob("busybox-static_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(tmp / "deb")], check=True)
    return tmp / "deb" / "bin" / "busybox"


def _codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"') or "bookworm"
    return "bookworm"


def debian_mirror(suite: str = "bookworm") -> str:
    """The Debian mirror this host's apt uses for ``suite`` (one-line or deb822 sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.strip()
                if suite in fields.get("suites", "").split() and "deb" in fields.get("types", "").split():
                    for uri in fields.get("uris", "").split():
                        if "security" not in uri:
                            return uri.rstrip("/")
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "deb":
                    words = [w for w in words if not w.startswith("[")]  # drop [arch=…] options
                    if len(words) >= 3 and words[2] == suite and "security" not in words[1]:
                        return words[1].rstrip("/")
    return "http://deb.debian.org/debian"
