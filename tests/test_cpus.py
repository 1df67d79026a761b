"""Pinning parallel suite runs to disjoint CPU sets (`cmah_jax.experiments.cpus`)."""
import os
import subprocess
import sys

import pytest

from cmah_jax.experiments import cpus


def test_slots_are_consecutive_disjoint_runs_of_the_available_cpus():
  # Hand-worked: CPUs 0-3 and 5 (4 offline), 2 jobs of 2 CPUs.
  assert cpus.cpu_slots([0, 1, 2, 3, 5], jobs=2, per_job=2) == [(0, 1), (2, 3)]
  assert cpus.cpu_slots([0, 1, 2, 3, 5], jobs=5, per_job=1) == [(0,), (1,), (2,), (3,), (5,)]
  assert cpus.cpu_slots([7], jobs=1, per_job=1) == [(7,)]


@pytest.mark.parametrize("jobs, per_job, message", [
    (3, 2, r"--jobs=3 x --cpus_per_job=2 = 6 CPUs, but this process may run on 5"),
    (0, 1, r"need jobs >= 1 and cpus_per_job >= 1, got 0 and 1"),
    (1, 0, r"need jobs >= 1 and cpus_per_job >= 1, got 1 and 0"),
])
def test_impossible_slots_are_refused_with_the_counts(jobs, per_job, message):
  with pytest.raises(ValueError, match=message):
    cpus.cpu_slots([0, 1, 2, 3, 5], jobs=jobs, per_job=per_job)


def test_a_pinned_child_runs_on_its_cpus_only():
  available = cpus.available_cpus()
  assert available == sorted(os.sched_getaffinity(0))
  probe = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
  for cpu_set in {(available[0],), (available[-1],), tuple(available)}:
    out = cpus.popen_pinned(probe, cpu_set, stdout=subprocess.PIPE, text=True)
    assert out.communicate()[0].strip() == str(list(cpu_set))
  unpinned = cpus.popen_pinned(probe, None, stdout=subprocess.PIPE, text=True)
  assert unpinned.communicate()[0].strip() == str(available)


def test_a_suite_refuses_more_cpus_than_it_has_by_name(tmp_path):
  too_many = len(cpus.available_cpus()) + 1
  out = subprocess.run(
      [sys.executable, "-m", "cmah_jax.experiments", "--suite=smoke", "--dry_run",
       f"--config=configs/default.py:runlocal,data_dir={tmp_path / 'data'}",
       f"--workdir={tmp_path / 'suite'}", "--seeds=1", "--jobs=1",
       f"--cpus_per_job={too_many}"],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert f"--jobs=1 x --cpus_per_job={too_many} = {too_many} CPUs" in out.stderr
  assert "Traceback" not in out.stderr
