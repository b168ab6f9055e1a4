"""Fixtures for end-to-end tests: the lab, a fresh area per test, the zfsrepl CLI.

    def test_something(lab, area, repl):
        fs = f"{area.src}/fs1"
        lab.src.zfs("create", fs)
        write_tree(lab.src.mountpoint(fs), seed=1)
        repl.write_service(filesystems=[(fs, f"{area.dst}/fs1")])
        repl.run("run", "testrepl")

Every test in this directory is marked ``e2e`` (deselect with ``-m "not e2e"``).

Backends: ``ZFSREPL_LAB_BACKEND=fuse`` (default) or ``openzfs``. A test runs on the
backends its ``backends`` marker names, on ``fuse`` only without one; the others are
deselected. Mark a module ``pytestmark = pytest.mark.backends("fuse", "openzfs")`` once
its tests pass on both; a test that needs current OpenZFS says ``backends("openzfs")``.

Environment: ``ZFSREPL_LAB_DIR`` (fuse lab, default /var/tmp/zfsrepl-lab),
``ZFSREPL_LAB_OPENZFS_DIR`` (default /var/tmp/zfsrepl-lab-openzfs),
``ZFSREPL_LAB_KEEP=1`` keeps a lab this session set up, ``ZFSREPL_LAB_BACKEND``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

E2E_DIR = Path(__file__).resolve().parent
# The helpers are the package `lab` in tests/ (a source root, like tests/unit's `unit`).
# pytest puts tests/ on sys.path only when it imports a package from there first.
if str(E2E_DIR.parent) not in sys.path:
    sys.path.insert(0, str(E2E_DIR.parent))

from lab import Area, Lab, ZfsreplCli, claim_area, lab_session  # noqa: E402
from lab.collect import add_backends_marker, select_by_backend  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    add_backends_marker(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    select_by_backend(config, items, E2E_DIR, [pytest.mark.e2e])


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab, set up for this session if needed (and then torn down at its end,
    unless ZFSREPL_LAB_KEEP=1); its zfsrepl runs the work tree's current code."""
    if os.geteuid() != 0:
        pytest.skip("e2e tests need root: they create pools, users and network namespaces")
    with lab_session(keep=os.environ.get("ZFSREPL_LAB_KEEP") == "1") as the_lab:
        yield the_lab


@pytest.fixture
def area(lab: Lab) -> Iterator[Area]:
    """Fresh parent filesystems for this test on both hosts (``area.src``, ``area.dst``),
    destroyed with everything below and every clone of them afterwards, pass or fail.
    Background processes the test started with ``popen`` are stopped first."""
    with claim_area(lab) as the_area:
        try:
            yield the_area
        finally:
            lab.stop_children()


@pytest.fixture
def repl(lab: Lab, area: Area) -> Iterator[ZfsreplCli]:
    """zfsrepl as the source host's user, with this test's own config and state dirs
    (``repl.write_service(...)``, ``repl.run(...)``, ``repl.popen(...)``)."""
    cli = ZfsreplCli(lab, area.name)
    cli.create()
    try:
        yield cli
    finally:
        lab.stop_children()  # a daemon must not outlive its state dir
        cli.destroy()


# ---------------------------------------------------------------------------- the package

REPO = E2E_DIR.parents[1]
DEB_TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian")


def missing_deb_tools() -> list[str]:
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    found = [t for t in DEB_TOOLS if shutil.which(t, path=path)]
    plugin = Path("/usr/share/dh-python/dhpython/build/plugin_pyproject.py").exists()
    return [t for t in DEB_TOOLS if t not in found] + \
        ([] if plugin else ["pybuild-plugin-pyproject"])


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian package, built once a session by scripts/build-deb (which installs the
    build tools as root); skipped where they are missing and cannot be installed."""
    from zfsrepl import __version__

    if missing_deb_tools() and os.geteuid() != 0:
        pytest.skip(f"build tools missing ({', '.join(missing_deb_tools())}) and not root "
                    "to install them")
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run([str(REPO / "scripts" / "build-deb"), str(out)], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0 and missing_deb_tools():
        pytest.skip(f"the build tools could not be installed: {proc.stdout[-2000:]}"
                    f"{proc.stderr[-2000:]}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    path = out / f"zfsrepl_{__version__}_all.deb"
    assert path.exists(), proc.stdout
    return path
