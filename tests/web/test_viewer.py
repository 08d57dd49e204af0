"""The OHIF viewer's routes (src/pacsnode/web/viewer.py) on a tiny fake dist folder: the generated
app-config.js, static files with their cache headers, the single-page-app fallback to index.html, the
paths it must never answer (DICOMweb root, /wado, /api), and install_viewer with a fake npm."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pacsnode.config.settings import Settings
from pacsnode.web import viewer
from pacsnode.web.viewer import (
    ViewerError,
    app_config,
    install_viewer,
    installed_version,
    viewer_folder,
    viewer_routes,
)

INDEX = b'<!doctype html><html><head><script src="/app-config.js"></script></head><body>OHIF</body></html>'
BUNDLE = b"console.log('bundle');"
BUNDLE_NAME = "app.bundle.0f6159c501addfe9.js"


def make_dist(folder: Path) -> Path:
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_bytes(INDEX)
    (folder / BUNDLE_NAME).write_bytes(BUNDLE)
    (folder / "34b1e6b1deb5828e.wasm").write_bytes(b"\0asm")
    (folder / "init-service-worker.js").write_text("// not hashed")
    (folder / "assets" / "favicon.ico").write_bytes(b"ico")
    (folder / "app-config.js").write_text("window.config = {aws: 'https://example.invalid/'};")
    return folder


def settings(tmp_path: Path, **web: object) -> Settings:
    return Settings.model_validate({"node": {"data": str(tmp_path / "data")}, "web": web})


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    return make_dist(tmp_path / "dist")


def asgi_client(routes: list) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=Starlette(routes=routes))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def client(tmp_path: Path, dist: Path):
    s = settings(tmp_path, viewer=str(dist), base_path="/dicom-web")
    async with asgi_client(viewer_routes(s)) as c:
        yield c


# ---------------------------------------------------------------- where the viewer is


def test_no_viewer_no_routes(tmp_path):
    s = settings(tmp_path)
    assert viewer_folder(s) is None
    assert viewer_routes(s) == []


def test_data_viewer_folder_is_the_default(tmp_path):
    s = settings(tmp_path)
    (tmp_path / "data" / "viewer").mkdir(parents=True)
    assert viewer_folder(s) is None  # no index.html yet: not a viewer
    make_dist(tmp_path / "data" / "viewer2")
    (tmp_path / "data" / "viewer").rmdir()
    (tmp_path / "data" / "viewer2").rename(tmp_path / "data" / "viewer")
    assert viewer_folder(s) == tmp_path / "data" / "viewer"
    assert len(viewer_routes(s)) == 2


def test_configured_viewer_wins(tmp_path, dist):
    make_dist(tmp_path / "data" / "viewer")
    assert viewer_folder(settings(tmp_path, viewer=str(dist))) == dist


def test_configured_viewer_without_index_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewerError, match=r"no index\.html"):
        viewer_routes(settings(tmp_path, viewer=str(tmp_path / "empty")))


# ---------------------------------------------------------------- app-config.js


def run_config(script: str, origin: str = "http://node.example:8042") -> dict:
    """Evaluate the generated script with node, as the browser would; skip without node."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node (Node.js) is not installed")
    program = (
        f"globalThis.window = {{location: {{origin: {json.dumps(origin)}}}}};\n{script}\n"
        "process.stdout.write(JSON.stringify(window.config));"
    )
    done = subprocess.run([node, "-e", program], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_app_config_points_at_our_dicomweb(tmp_path):
    config = run_config(app_config(settings(tmp_path, base_path="/dw")))
    assert config["routerBasename"] == "/"
    assert config["showStudyList"] is True
    assert config["defaultDataSourceName"] == "pacsnode"
    [source] = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert source["sourceName"] == "pacsnode"
    c = source["configuration"]
    assert c["qidoRoot"] == c["wadoRoot"] == "http://node.example:8042/dw"
    assert c["wadoUriRoot"] == "http://node.example:8042/wado"
    assert c["imageRendering"] == c["thumbnailRendering"] == "wadors"
    assert c["staticWado"] is False
    assert c["bulkDataURI"]["enabled"] is True
    for flag in (
        "qidoSupportsIncludeField",
        "supportsWildcard",
        "omitQuotationForMultipartRequest",
        "supportsFuzzyMatching",
        "enableStudyLazyLoad",
    ):
        assert c[flag] is True, flag
    assert "example.invalid" not in json.dumps(config)  # not the shipped file


def test_app_config_is_plain_javascript_without_node(tmp_path):
    script = app_config(settings(tmp_path))
    assert "window.config = config" in script
    assert "window.location.origin" in script
    assert '"qidoRoot": "/dicom-web"' in script
    assert "</" not in script


def test_app_config_escapes_the_ae_title(tmp_path):
    s = Settings.model_validate({"node": {"aet": 'A"B</x>'}})
    config = run_config(app_config(s))
    assert config["dataSources"][0]["configuration"]["friendlyName"] == 'pacsnode A"B</x>'


async def test_app_config_route_is_generated(client):
    r = await client.get("/app-config.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == "no-cache"
    assert "example.invalid" not in r.text
    assert '"qidoRoot": "/dicom-web"' in r.text


# ---------------------------------------------------------------- static files and the SPA fallback


async def test_index_at_the_root(client):
    r = await client.get("/")
    assert r.status_code == 200
    assert r.content == INDEX
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/viewer?StudyInstanceUIDs=1.2.840.113619.2.1.1",
        "/viewer/dicomweb?StudyInstanceUIDs=1.2.3&SeriesInstanceUIDs=1.2.3.4",
        "/segmentation?StudyInstanceUIDs=1.2.3",
        "/viewer/1.2.840.10008.5.1",  # a UID's last part is no file extension
        "/local",
        "/index.html",
    ],
)
async def test_spa_fallback(client, path):
    r = await client.get(path)
    assert r.status_code == 200, path
    assert r.content == INDEX


async def test_hashed_bundles_are_immutable(client):
    r = await client.get(f"/{BUNDLE_NAME}")
    assert r.status_code == 200
    assert r.content == BUNDLE
    assert "javascript" in r.headers["content-type"]
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert (await client.get("/34b1e6b1deb5828e.wasm")).headers["cache-control"].endswith("immutable")
    r = await client.get("/init-service-worker.js")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-cache"
    assert (await client.get("/assets/favicon.ico")).content == b"ico"


async def test_conditional_get(client):
    etag = (await client.get(f"/{BUNDLE_NAME}")).headers["etag"]
    r = await client.get(f"/{BUNDLE_NAME}", headers={"If-None-Match": etag})
    assert r.status_code == 304


async def test_head(client):
    r = await client.head(f"/{BUNDLE_NAME}")
    assert r.status_code == 200
    assert r.content == b""
    assert int(r.headers["content-length"]) == len(BUNDLE)


@pytest.mark.parametrize("path", ["/missing.bundle.0123456789abcdef.js", "/assets/none.png", "/x.wasm"])
async def test_missing_assets_are_404_not_index(client, path):
    r = await client.get(path)
    assert r.status_code == 404


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/assets/../../secret.txt", "/%2e%2e/secret.txt"])
async def test_no_escape_from_the_folder(client, tmp_path, path):
    (tmp_path / "secret.txt").write_text("secret")
    r = await client.get(path)
    assert b"secret" not in r.content
    assert r.status_code in (200, 404)


async def test_other_methods_are_not_answered(client):
    assert (await client.post("/viewer")).status_code == 404
    assert (await client.delete("/")).status_code == 404


# ---------------------------------------------------------------- never in place of the node's services


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web",
        "/dicom-web/",
        "/dicom-web/studies",
        "/dicom-web/studies/1.2.3/series/1.2.3.4/metadata",
        "/dicom-web/app.bundle.0f6159c501addfe9.js",
        "/wado",
        "/wado?requestType=WADO&studyUID=1",
        "/wado/x",
        "/api",
        "/api/",
        "/api/system",
    ],
)
async def test_reserved_paths_are_not_served(client, path):
    r = await client.get(path)
    assert r.status_code == 404, path
    assert r.content != INDEX


async def test_custom_base_path_is_reserved(tmp_path, dist):
    s = settings(tmp_path, viewer=str(dist), base_path="/pacs/dw")
    async with asgi_client(viewer_routes(s)) as c:
        assert (await c.get("/pacs/dw/studies")).status_code == 404
        assert (await c.get("/dicom-web/studies")).content == INDEX  # an ordinary path of the viewer now


async def test_services_mounted_first_still_answer(tmp_path, dist):
    """As the node mounts them: DICOMweb, /wado and /api first, the viewer last."""
    s = settings(tmp_path, viewer=str(dist))

    async def service(request):
        return PlainTextResponse(f"service {request.url.path}")

    routes = [
        Mount("/dicom-web", routes=[Route("/", service), Route("/studies", service)]),
        Route("/wado", service, methods=["GET"]),
        Mount("/api", routes=[Route("/system", service)]),
        *viewer_routes(s),
    ]
    async with asgi_client(routes) as c:
        assert (await c.get("/dicom-web/studies")).text == "service /dicom-web/studies"
        r = await c.get("/dicom-web")  # the router's slash redirect, as without the viewer
        assert r.status_code == 307
        assert r.headers["location"] == "http://testserver/dicom-web/"
        assert (await c.get("/wado")).text == "service /wado"
        assert (await c.post("/wado")).status_code == 405
        assert (await c.get("/api/system")).text == "service /api/system"
        assert (await c.get("/dicom-web/nothing")).status_code == 404
        assert (await c.get("/viewer?StudyInstanceUIDs=1.2.3")).content == INDEX


# ---------------------------------------------------------------- install_viewer with a fake npm


def fake_tarball(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def fake_npm(tmp_path: Path, files: dict[str, bytes] | None, *, exit_code: int = 0) -> str:
    """An executable `npm` whose `pack SPEC` copies a prepared tarball into the current folder."""
    tarball = tmp_path / "prepared.tgz"
    if files is not None:
        fake_tarball(tarball, files)
    log = tmp_path / "npm-args.txt"
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir(exist_ok=True)
    copy = f'cp "{tarball}" ohif-app.tgz' if files is not None else ":"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{log}"\n'
        f"if [ {exit_code} -ne 0 ]; then echo 'npm ERR! 404 Not Found' >&2; exit {exit_code}; fi\n"
        f"{copy}\n"
        "echo ohif-app.tgz\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


DIST_FILES = {
    "package/package.json": b'{"name": "@ohif/app"}',
    "package/README.md": b"readme",
    "package/dist/index.html": INDEX,
    f"package/dist/{BUNDLE_NAME}": BUNDLE,
    "package/dist/assets/favicon.ico": b"ico",
}


async def test_install_viewer(tmp_path):
    npm = fake_npm(tmp_path, DIST_FILES)
    dest = tmp_path / "data" / "viewer"
    said: list[str] = []
    assert install_viewer(dest, "3.13.2", npm=npm, progress=said.append) == dest.absolute()
    assert (tmp_path / "npm-args.txt").read_text().split()[:2] == ["pack", "@ohif/app@3.13.2"]
    assert (dest / "index.html").read_bytes() == INDEX
    assert (dest / BUNDLE_NAME).read_bytes() == BUNDLE
    assert (dest / "assets" / "favicon.ico").read_bytes() == b"ico"
    assert not (dest / "package.json").exists()
    assert installed_version(dest) == "3.13.2"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["viewer"]  # no temporary left
    assert any("3.13.2" in line for line in said)
    # The folder is served as installed.
    async with asgi_client(viewer_routes(settings(tmp_path))) as c:
        assert (await c.get("/viewer")).content == INDEX


def test_install_viewer_replaces_an_old_install(tmp_path):
    dest = tmp_path / "viewer"
    make_dist(dest)
    (dest / "stale.js").write_text("old")
    install_viewer(dest, "9.9.9", npm=fake_npm(tmp_path, DIST_FILES))
    assert not (dest / "stale.js").exists()
    assert installed_version(dest) == "9.9.9"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".viewer")) == []


def test_install_viewer_without_npm(tmp_path):
    with pytest.raises(ViewerError, match=r"install Node\.js and npm"):
        install_viewer(tmp_path / "viewer", npm=str(tmp_path / "no-such-npm"))
    assert not (tmp_path / "viewer").exists()


def test_install_viewer_npm_fails_keeps_the_old_install(tmp_path):
    dest = make_dist(tmp_path / "viewer")
    with pytest.raises(ViewerError, match=r"exit 1.*404 Not Found"):
        install_viewer(dest, "0.0.0", npm=fake_npm(tmp_path, None, exit_code=1))
    assert (dest / "index.html").read_bytes() == INDEX
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".viewer")) == []


def test_install_viewer_rejects_a_package_without_dist(tmp_path):
    npm = fake_npm(tmp_path, {"package/package.json": b"{}", "package/index.js": b""})
    with pytest.raises(ViewerError, match=r"no package/dist/"):
        install_viewer(tmp_path / "viewer", npm=npm)
    assert not (tmp_path / "viewer").exists()


def test_install_viewer_rejects_a_dist_without_index(tmp_path):
    npm = fake_npm(tmp_path, {"package/dist/app.js": b""})
    with pytest.raises(ViewerError, match=r"no index\.html"):
        install_viewer(tmp_path / "viewer", npm=npm)


def test_install_viewer_refuses_paths_out_of_the_tarball(tmp_path):
    npm = fake_npm(tmp_path, {**DIST_FILES, "package/dist/../../../../escaped.txt": b"x"})
    with pytest.raises(ViewerError):
        install_viewer(tmp_path / "out" / "viewer", npm=npm)
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))


def test_install_viewer_with_monkeypatched_pack(tmp_path, monkeypatch):
    """The npm step alone replaced in Python: the rest is the real code path."""
    calls = []

    def pack(npm: str, spec: str, workdir: Path) -> Path:
        calls.append((npm, spec))
        fake_tarball(workdir / "t.tgz", DIST_FILES)
        return workdir / "t.tgz"

    monkeypatch.setattr(viewer, "_npm_pack", pack)
    dest = install_viewer(tmp_path / "v", "3.13.2", npm="mynpm")
    assert calls == [("mynpm", "@ohif/app@3.13.2")]
    assert (dest / "index.html").is_file()
    assert os.listdir(tmp_path) == ["v"]
