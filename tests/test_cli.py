"""The `nerd` and `nerdfs` commands as a user runs them: real processes, real stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seaweed import ACCESS_KEY, SECRET_KEY


def run(args: list[str], home: Path, *, env: dict | None = None, prog: str = "nerdcli") -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NERD_"))}
    e.update({"NERD_HOME": str(home), **(env or {})})
    cmd = [sys.executable, "-c", "import nerdfs.cli as c; c.main()"] if prog == "nerdfs" else \
        [sys.executable, "-m", "nerdcli"]
    return subprocess.run([*cmd, *args], env=e, capture_output=True, text=True, timeout=300)


def nerd_json(args: list[str], home: Path, **kw) -> dict:
    r = run(["--output", "json", *args], home, **kw)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # stdout holds exactly one JSON document


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nerd: error: ") and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def sample(tmp_path) -> Path:
    src = tmp_path / "sample"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "notes.txt").write_text("hello\n" * 1000)
    (src / "sub" / "deep" / "empty").write_bytes(b"")
    (src / "link").symlink_to("sub/notes.txt")
    os.chmod(src / "sub" / "notes.txt", 0o640)
    os.utime(src / "big.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return src


def snapshot_of(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", st.st_mode & 0o7777)
        else:
            out[rel] = ("file", p.read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def test_upload_download_round_trip_with_json(home, sample, tmp_path):
    up = nerd_json(["dataset", "upload", str(sample)], home)
    assert up["dataset"] == "sample" and up["changed"] is True and up["parent"] is None
    assert up["files"] == 3 and up["bytes_total"] == (3 << 20) + 6000
    assert 0 < up["bytes_uploaded"] <= up["bytes_total"]  # the text compresses
    again = nerd_json(["dataset", "upload", str(sample)], home)
    assert again["bytes_uploaded"] == 0 and again["changed"] is False and again["snapshot"] == up["snapshot"]

    down = nerd_json(["dataset", "download", "sample", str(tmp_path / "out")], home)
    assert down["snapshot"] == up["snapshot"] and down["files"] == 3
    assert snapshot_of(tmp_path / "out") == snapshot_of(sample)


def test_edit_sends_one_chunk_and_log_shows_history(home, sample, tmp_path):
    first = nerd_json(["dataset", "upload", str(sample), "--name", "ds", "-m", "one"], home)
    with open(sample / "big.bin", "r+b") as f:
        f.seek(2 << 20)
        f.write(b"changed")
    second = nerd_json(["dataset", "upload", str(sample), "--name", "ds", "-m", "two"], home)
    assert second["parent"] == first["snapshot"]
    assert 0 < second["bytes_uploaded"] <= 4 << 20 and second["chunks_new"] == 1
    log = nerd_json(["dataset", "log", "ds"], home)
    assert [s["snapshot"] for s in log["snapshots"]] == [second["snapshot"], first["snapshot"]]
    assert [s["message"] for s in log["snapshots"]] == ["two", "one"]
    # The old version is still there, byte for byte.
    old = tmp_path / "old"
    nerd_json(["dataset", "download", f"ds@{first['snapshot'][:8]}", str(old)], home)
    assert (old / "big.bin").read_bytes()[2 << 20:(2 << 20) + 7] != b"changed"
    listing = nerd_json(["dataset", "list"], home)
    assert [(d["name"], d["snapshot"]) for d in listing["datasets"]] == [("ds", second["snapshot"])]


def test_text_output_and_warnings_go_to_the_right_stream(home, sample):
    os.mkfifo(sample / "pipe")
    r = run(["dataset", "upload", str(sample)], home)
    assert r.returncode == 0, r.stderr
    assert "new snapshot" in r.stdout and "warning" not in r.stdout
    assert "skipping special file" in r.stderr and "pipe" in r.stderr
    r = run(["-o", "json", "dataset", "upload", str(sample)], home)
    assert json.loads(r.stdout)["skipped"] == ["pipe"]


def test_user_errors_are_one_line_with_documented_codes(home, sample, tmp_path):
    assert_one_line_error(run(["dataset", "upload", str(tmp_path / "nope")], home), 4, "does not exist")
    assert_one_line_error(run(["dataset", "upload", str(sample / "big.bin")], home), 2, "not a directory")
    assert_one_line_error(run(["dataset", "upload", str(sample), "--name", "../x"], home), 2, "invalid dataset name")
    assert_one_line_error(run(["dataset", "download", "ghost", str(tmp_path / "o")], home), 4, "ghost")
    nerd_json(["dataset", "upload", str(sample)], home)
    assert_one_line_error(run(["dataset", "download", "sample@ffff", str(tmp_path / "o")], home), 4, "ffff")
    assert_one_line_error(run(["dataset", "download", "sample@zz", str(tmp_path / "o")], home), 2, "snapshot id")
    assert_one_line_error(run(["dataset", "download", "sample", str(sample)], home), 2, "not empty", "--force")
    # --output json: the error is also a document on stdout, for scripts.
    r = run(["dataset", "log", "ghost", "--output", "json"], home)
    assert r.returncode == 4 and json.loads(r.stdout)["error"]["exit_code"] == 4


def test_malformed_config_names_the_file_and_problem(home, sample):
    home.mkdir(parents=True)
    cfg = home / "config.json"
    cfg.write_text('{"datasets": {"store": ')
    assert_one_line_error(run(["dataset", "list"], home), 3, str(cfg), "not valid JSON")
    cfg.write_text('{"datasets": {"cache_size": "lots"}}')
    assert_one_line_error(run(["dataset", "list"], home), 3, "datasets.cache_size")
    cfg.write_text('{"datasets": {"threads": "8"}}')
    assert_one_line_error(run(["dataset", "list"], home), 3, "datasets.threads")
    cfg.write_text('{"datasets": {"store": "ftp://x/y"}}')
    assert_one_line_error(run(["dataset", "list"], home), 3, "unsupported scheme")
    # --config-file points elsewhere; a missing file means defaults.
    r = run(["--config-file", str(home / "absent.json"), "dataset", "list"], home)
    assert r.returncode == 0 and "(no datasets)" in r.stdout


def test_download_of_corrupted_chunk_fails_cleanly_and_check_finds_it(home, sample, tmp_path):
    up = nerd_json(["dataset", "upload", str(sample)], home)
    store = home / "store"
    # Corrupt the chunks of big.bin: every chunk object of 1 MiB or more.
    victims = [p for p in (store / "chunks").rglob("*") if p.is_file() and p.stat().st_size > 200_000]
    assert victims
    bad = victims[0]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    cache = home / "cache" / "objects"
    if cache.exists():
        for p in cache.rglob(bad.name):
            p.unlink()
    out = tmp_path / "out"
    r = run(["dataset", "download", "sample", str(out)], home)
    assert_one_line_error(r, 7, bad.name)
    assert not (out / "big.bin").exists()
    assert not list(out.rglob(".nerd-part-*"))
    r = run(["check", "--read-data", "-o", "json"], home, prog="nerdfs")
    assert r.returncode == 7, r.stderr
    report = json.loads(r.stdout)
    assert not report["ok"] and any(bad.name in p for p in report["problems"])
    assert up["snapshot"]


def test_delete_keeps_snapshots_reachable_by_full_id(home, sample, tmp_path):
    up = nerd_json(["dataset", "upload", str(sample), "--name", "tmpds"], home)
    d = nerd_json(["dataset", "delete", "tmpds", "--yes"], home)
    assert d == {"dataset": "tmpds", "deleted": True, "snapshot": up["snapshot"]}
    assert nerd_json(["dataset", "list"], home)["datasets"] == []
    assert_one_line_error(run(["dataset", "delete", "tmpds", "--yes"], home), 4, "tmpds")
    nerd_json(["dataset", "download", f"tmpds@{up['snapshot']}", str(tmp_path / "back")], home)
    assert snapshot_of(tmp_path / "back") == snapshot_of(sample)


def test_help_has_examples_and_exit_codes(home):
    r = run(["--help"], home)
    assert r.returncode == 0 and "Exit codes" in r.stdout and "130" in r.stdout
    for cmd in ("upload", "download", "list", "log", "delete"):
        r = run(["dataset", cmd, "--help"], home)
        assert r.returncode == 0 and "Example" in r.stdout, cmd


# ------------------------------------------------------------------ S3


def s3_env(seaweed) -> dict:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}


def write_config(home: Path, store: str, endpoint: str, **s3) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"datasets": {"store": store, "s3": {"endpoint_url": endpoint, **s3}}}))


def test_s3_store_from_config_round_trip(home, sample, tmp_path, seaweed, s3_bucket):
    write_config(home, f"s3://{s3_bucket}/team", seaweed.endpoint, access_key_id=ACCESS_KEY,
                 secret_access_key=SECRET_KEY)
    up = nerd_json(["dataset", "upload", str(sample)], home)
    keys = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert "team/config" in keys and "team/refs/sample" in keys
    assert any(k.startswith("team/chunks/") for k in keys)
    # A second machine (empty cache) downloads it.
    other = tmp_path / "other-home"
    write_config(other, f"s3://{s3_bucket}/team", seaweed.endpoint)
    down = nerd_json(["dataset", "download", "sample", str(tmp_path / "out")], other, env=s3_env(seaweed))
    assert down["snapshot"] == up["snapshot"]
    assert snapshot_of(tmp_path / "out") == snapshot_of(sample)


def test_nerd_store_env_overrides_config(home, sample, seaweed, s3_bucket):
    write_config(home, "file:///nonexistent/never/used", seaweed.endpoint)
    env = {**s3_env(seaweed), "NERD_STORE": f"s3://{s3_bucket}"}
    nerd_json(["dataset", "upload", str(sample)], home, env=env)
    assert seaweed.client().head_object(Bucket=s3_bucket, Key="refs/sample")


def test_s3_errors_are_clear(home, sample, seaweed, s3_bucket):
    write_config(home, "s3://no-such-bucket-here/x", seaweed.endpoint)
    assert_one_line_error(run(["dataset", "list"], home, env=s3_env(seaweed)), 6, "no-such-bucket-here",
                          "does not exist")
    write_config(home, f"s3://{s3_bucket}/x", seaweed.endpoint, access_key_id=ACCESS_KEY,
                 secret_access_key="wrong")
    assert_one_line_error(run(["dataset", "upload", str(sample)], home), 6, "access denied")
    write_config(home, f"s3://{s3_bucket}/x", "http://127.0.0.1:9", access_key_id=ACCESS_KEY,
                 secret_access_key=SECRET_KEY)
    assert_one_line_error(run(["dataset", "upload", str(sample)], home), 6, "cannot reach", "endpoint_url")


def test_sdk_reports_progress_through_the_callback(tmp_path, sample):
    from nerdcli.config import Config
    from nerdcli.service import datatransfer

    cfg = Config()
    cfg.datasets.store = f"file://{tmp_path / 'store'}"
    cfg.datasets.cache_dir = str(tmp_path / "cache")
    events = []
    up = datatransfer.upload(sample, "sdk", config=cfg, progress=events.append)
    assert up.dataset == "sdk" and up.files == 3
    final = [e for e in events if e.phase == "upload"][-1]
    assert final.bytes_done == final.bytes_total == up.bytes_total and final.files_done == 3
    assert final.bytes_sent == up.bytes_uploaded
    events.clear()
    down = datatransfer.download("sdk", tmp_path / "out", config=cfg, progress=events.append)
    assert down.bytes_total == up.bytes_total and events[-1].bytes_done == up.bytes_total
    assert snapshot_of(tmp_path / "out") == snapshot_of(sample)
