"""Lean start-up: `threadstore stats` loads neither the demo, the emulator nor APScheduler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from threadstore import ThreadStore
from threadstore.testing import FakeRemote

HEAVY = ("apscheduler", "threadstore.demo", "threadstore.testing")


def test_stats_imports_no_demo_emulator_or_scheduler(tmp_path: Path) -> None:
    """`python -X importtime -m threadstore stats` lists none of the heavy modules."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    # `stats` only reads (issue 13): the store must exist before it runs.
    ThreadStore(url, remote=FakeRemote()).close()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "threadstore", "--db", url, "stats"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "threadstore.stats" in imported  # the probe sees our own modules
    loaded = sorted(m for m in imported if m.startswith(HEAVY))
    assert loaded == [], loaded
