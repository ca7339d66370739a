"""`make test` runs pytest-xdist with `--dist loadgroup`: the tests of one `xdist_group` run on one worker, in file
order, so a module-scoped world is built once and a group's tests may rely on each other's order.

pytest 9.2 broke that silently with pytest-xdist 3.8 (the group suffix no longer reached the node ids: every group
was scattered over the workers, and requirements.in pins pytest below 9 for it). This runs a small suite the way
`make test` does and checks where its grouped tests ran, so an upgrade that breaks grouping again fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

GROUPED = """\
import json, os, pytest

pytestmark = pytest.mark.xdist_group("shared-world")


def record(name):
    with open(os.environ["GROUPING_LOG"], "a") as log:
        log.write(json.dumps([name, os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_step(step):
    record(f"step{step}")


def test_last():
    record("last")
"""
LOOSE = """\
import time


def test_a():
    time.sleep(0.3)


def test_b():
    time.sleep(0.3)


def test_c():
    time.sleep(0.3)
"""


def test_a_groups_tests_run_on_one_worker_in_file_order_as_make_test_runs_them(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_loose.py").write_text(LOOSE)
    log = tmp_path / "ran.jsonl"
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "3", "--dist", "loadgroup",
         "--no-loadscope-reorder", "-q", str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "GROUPING_LOG": str(log)}, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    assert [name for name, _ in ran] == ["step1", "step2", "step3", "step4", "last"]
    workers = {worker for _, worker in ran}
    assert len(workers) == 1, f"the group was split over the workers {sorted(workers)}"
