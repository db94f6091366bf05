"""The wheel: built offline, it carries the migrations and py.typed, and works installed.

Built with ``pip wheel --no-build-isolation`` (hatchling is in the dev venv, so no
network), installed with ``--no-deps --no-index`` into a fresh venv that borrows
the current venv's third-party packages through a ``.pth`` line, then run from a
directory outside the checkout so that nothing can come from ``src/``.
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from threadstore import db

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADSTORE_", "DASHSCOPE_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", out, ROOT, cwd=out, timeout=120)
    (built,) = out.glob("threadstore-*.whl")
    return built


def test_wheel_ships_migrations_typing_marker_and_entry_point(wheel: Path) -> None:
    """The wheel holds the Alembic scripts, every migration version, py.typed and the CLI."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "threadstore/py.typed" in names
    assert "threadstore/_migrations/env.py" in names
    assert "threadstore/_migrations/script.py.mako" in names
    versions = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    shipped = {Path(n).name for n in names if n.startswith("threadstore/_migrations/versions/")}
    assert versions
    assert versions <= shipped
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert re.search(r"^threadstore = threadstore\.cli:main$", text, re.M)


def test_installed_wheel_migrates_and_runs_the_demo_from_elsewhere(
    wheel: Path, tmp_path: Path
) -> None:
    """Installed from the wheel, `db upgrade`, `db current` and `demo` work outside the checkout."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                        cwd=tmp_path).stdout.strip())
    # Third-party packages from this venv, without its editable threadstore: a plain
    # path line does not run the .pth hooks found in that directory.
    (purelib / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run(sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps",
         "--no-index", wheel, cwd=tmp_path, timeout=120)
    work = tmp_path / "elsewhere"
    work.mkdir()
    exe = env_dir / "bin" / "threadstore"

    where = _run(py, "-c", "import threadstore; print(threadstore.__file__)", cwd=work)
    assert Path(where.stdout.strip()).is_relative_to(env_dir)

    _run(exe, "--db", "sqlite:///x.db", "db", "upgrade", cwd=work)
    current = _run(exe, "--db", "sqlite:///x.db", "db", "current", cwd=work)
    assert current.stdout.strip() == db.head_revision()
    assert (work / "x.db").stat().st_mode & 0o777 == 0o600

    demo = _run(exe, "demo", cwd=work, timeout=60)
    assert "local row deleted" in demo.stdout
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith("x.db")) == []
