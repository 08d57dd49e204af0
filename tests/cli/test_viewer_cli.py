"""`pacsnode viewer install`: fetches the viewer with npm (a stand-in npm here) into the folder
serve reads, replaces an old install only once the new one is whole, and fails clearly."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from peerkit import PACSNODE, run_tool

FAKE_NPM = """#!/usr/bin/env python3
import io, os, sys, tarfile
# npm pack @ohif/app@VERSION: writes the tarball into the working folder, prints its name
if os.environ.get("FAKE_NPM_FAIL"):
    sys.exit("npm ERR! 404 Not Found - GET https://registry.npmjs.org/@ohif%2fapp")
spec = next(a for a in sys.argv[1:] if a.startswith("@ohif/app@"))
name = "ohif-app-" + spec.rsplit("@", 1)[1] + ".tgz"
with tarfile.open(name, "w:gz") as tar:
    for path, data in (("package/dist/index.html", b"<html>OHIF</html>"), ("package/dist/app.js", b"x")):
        info = tarfile.TarInfo(path)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
print(name)
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    return {**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", "COLUMNS": "200", **extra}


def test_install_into_the_data_folder(tmp_path):
    data = tmp_path / "data"
    r = run_tool([PACSNODE, "viewer", "install", "--data", str(data)], env=_env(tmp_path), cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout
    assert (data / "viewer" / "index.html").read_bytes() == b"<html>OHIF</html>"
    assert "installed" in r.stdout


def test_npm_failure_keeps_the_old_install(tmp_path):
    dest = tmp_path / "ohif"
    dest.mkdir()
    (dest / "index.html").write_text("old")
    env = _env(tmp_path, FAKE_NPM_FAIL="1")
    r = run_tool([PACSNODE, "viewer", "install", "--dest", str(dest)], env=env, cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout
    assert "404" in r.stdout or "npm" in r.stdout
    assert (dest / "index.html").read_text() == "old"


def test_without_npm_the_user_is_told_what_to_install(tmp_path):
    env = {**_env(tmp_path), "PATH": str(tmp_path / "nothing-here")}
    r = run_tool([PACSNODE, "viewer", "install", "--dest", str(tmp_path / "v")], env=env, cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout
    assert "npm" in r.stdout
