"""The wheel is the product: built as a release is (sdist, then the wheel from it), installed into
a fresh venv outside the checkout, it runs the tiny demo and serves a feature page, a findings
page and the OpenAPI document from a folder that is not the repository."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess  # nosec B404  # the tools under test, with fixed arguments
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

REPO = Path(__file__).resolve().parent.parent
# First and on its own: a looser torch lets pip pick a multi-GB CUDA build (the Makefile does the same).
TORCH = "torch==2.13.0"
SERVE_TIMEOUT = 120.0  # seconds for the server to answer /-/health


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; its output, or a failure that shows it."""
    done = subprocess.run(  # nosec B603
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, (
        f"{args} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a user with only the venv on PATH: no PYTHONPATH, no DATABASE_URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=60) as response:  # nosec B310  # http://127.0.0.1 only
        return response.status, response.read().decode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `python -m build` makes: the sdist first, then the wheel from the unpacked sdist,
    so what the sdist forgets (MANIFEST.in) the wheel lacks too."""
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", dist, REPO], cwd=dist)
    (wheel,) = dist.glob("monosemantic-*.whl")
    return wheel


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_wheel_holds_every_module_template_and_static_file(wheel: Path) -> None:
    """Every file of the packages (modules and any data beside them), templates/ and static/."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(REPO).as_posix()
        for package in ("monosemantic", "trainer", "app")
        for path in _files(REPO / package)
    }
    expected |= {
        f"app/web/{path.relative_to(REPO).as_posix()}"
        for folder in ("templates", "static")
        for path in _files(REPO / folder)
    }
    assert sorted(expected - names) == []
    assert not any(name.startswith(("tests/", "templates/", "static/")) for name in names)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv outside the checkout with the wheel (and its corpus extra) installed; removed
    afterwards (1.4 GB, torch mostly: pytest would keep the last three runs' copies)."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", venv], cwd=venv)
    # --no-compile: byte-compiling every installed file (torch alone has thousands) is most of the
    # install's time; the modules the demo imports are compiled as they are first imported.
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile"]
    _run([*pip, TORCH], cwd=venv)
    _run([*pip, f"{wheel}[corpus]"], cwd=venv)
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture(scope="module")
def served(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The installed `monosemantic`: the tiny demo, then `serve` on a free port; its base URL."""
    work = tmp_path_factory.mktemp("user")  # the user's folder: not the checkout
    env = _clean_env(venv)
    monosemantic = venv / "bin" / "monosemantic"  # the console script the wheel installs
    _run([monosemantic, "--help"], cwd=work, env=env)
    _run(
        [monosemantic, "demo", "--preset", "tiny", "--no-serve", "--out-dir", work / "run"],
        cwd=work,
        env=env,
    )
    port = _free_port()
    log = (work / "serve.log").open("w")
    server = subprocess.Popen(  # nosec B603
        [
            monosemantic,
            "serve",
            "--db",
            str(work / "run" / "monosemantic.db"),
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            assert server.poll() is None, f"monosemantic serve exited:\n{(work / 'serve.log').read_text()}"
            try:
                if _get(f"{base}/-/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "monosemantic serve did not answer /-/health"
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_installed_app_reads_templates_and_static_from_the_venv(venv: Path) -> None:
    probe = "import app.main, app.pages.templating as t; print(t.TEMPLATES_DIR); print(t.STATIC_DIR)"
    folders = _run([venv / "bin" / "python", "-c", probe], cwd=venv, env=_clean_env(venv)).split()
    assert [Path(f).relative_to(venv).parts[-3:] for f in folders] == [
        ("app", "web", "templates"),
        ("app", "web", "static"),
    ]


def test_installed_wheel_serves_feature_findings_and_openapi(served: str) -> None:
    status, body = _get(f"{served}/api/runs")
    assert status == 200
    (slug,) = [run["slug"] for run in json.loads(body)["runs"] if run["kind"] == "sae"]

    status, page = _get(f"{served}/runs/{slug}/features/0")
    assert status == 200 and "<h1>Feature 0</h1>" in page

    status, page = _get(f"{served}/runs/{slug}/findings")
    assert status == 200 and "<h1>The paper's findings on <bdi>" in page

    status, body = _get(f"{served}/openapi.json")
    assert status == 200
    schema = json.loads(body)
    assert schema["openapi"].startswith("3.") and "/api/runs/{run}/features/{index}" in schema["paths"]

    status, css = _get(f"{served}/static/app.css")
    assert status == 200 and css == (REPO / "static" / "app.css").read_text()
