"""20 SIGKILLs of `dense extract` at events while it writes (a temp file appears; the k-th new entry), then a
resume: no temp file and no damaged entry is left (scripts/kill_extract.py; its fork mode runs
`dense.cli.main(["extract", ...])` in children of one process that imported dense once, so the kills cost seconds,
not 20 interpreter starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_twenty_kills_and_a_resume_leave_no_temp_file_and_no_damaged_entry(tmp_path):
    out = tmp_path / "counts.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "kill_extract.py"), "--mode", "fork", "--kills", "20",
                          "--images", "120", "--seed", "3", "--work", str(tmp_path / "work"), "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), run.stdout + run.stderr
    counts = json.loads(out.read_text())
    assert counts["kills"] == 20, counts  # rounds go on until 20 kills land: no dependence on the CPU's speed
    assert counts["temp_files_seen_after_kills"] > 0, "no kill landed mid-write: the test would prove nothing"
    assert counts["damaged_entries_after_kills"] == 0, counts  # atomic: an entry is whole or absent
    assert counts["resume_exit"] == 0 and counts["damaged_redone_by_resume"] == 0, run.stdout + run.stderr
    assert counts["temp_files_after_resume"] == 0, run.stdout
    assert counts["damaged_after_resume"] == 0 and counts["valid_entries"] == 120, counts
    assert run.returncode == 0, run.stdout + run.stderr
