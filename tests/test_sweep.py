"""`python -m cmah_jax.sweep`: one run per code length, one table; a finished run is not
run again (its checkpoints and report are left as they were)."""
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep(tmp_path, bits):
  return subprocess.run(
      [sys.executable, "-m", "cmah_jax.sweep",
       f"--config=configs/default.py:runlocal,steps=2,data_dir={tmp_path / 'data'}",
       f"--workdir={tmp_path / 'sweep'}", f"--bits={bits}"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=900)


def test_sweep_writes_one_row_per_code_length_and_skips_finished_runs(tmp_path):
  first = _sweep(tmp_path, "8,16")
  assert first.returncode == 0, first.stderr[-3000:]
  rows = json.load(open(tmp_path / "sweep" / "sweep.json"))
  assert [r["bits"] for r in rows] == [8, 16] and all(r["steps"] == 2 for r in rows)
  for r in rows:  # the table's numbers are each run's report's
    report = json.load(open(tmp_path / "sweep" / f"bits_{r['bits']}" / "report.json"))
    assert r["map"] == report["map"]
  table = (tmp_path / "sweep" / "sweep.md").read_text()
  assert re.findall(r"^\| (\d+) \|", table, re.M) == ["8", "16"]  # a row per code length
  stamp = os.path.getmtime(tmp_path / "sweep" / "bits_8" / "report.json")
  again = _sweep(tmp_path, "8")
  assert again.returncode == 0, again.stderr[-3000:]
  assert os.path.getmtime(tmp_path / "sweep" / "bits_8" / "report.json") == stamp
  assert [r["bits"] for r in json.load(open(tmp_path / "sweep" / "sweep.json"))] == [8]
