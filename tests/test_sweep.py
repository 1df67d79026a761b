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


def test_a_finished_run_sized_in_epochs_is_not_run_again(tmp_path):
  """The real datasets' configs leave the step count to the prepared train split: the
  sweep fills it in before it compares with the finished run's report (it used to resume
  and re-evaluate such a run every time)."""
  from test_real_datasets import make_shapenet_render  # pylint: disable=import-outside-toplevel
  manual = tmp_path / "manual"
  make_shapenet_render(manual, per_class=10, views=4, n_points=600)  # 24 train examples
  cmd = [sys.executable, "-m", "cmah_jax.sweep",
         f"--config=configs/shapenet_render.py:variant=tiny,batch=8,epochs=0.4,"
         f"dataset_config=tiny,data_dir={tmp_path / 'data'},manual_dir={manual}",
         f"--workdir={tmp_path / 'sweep'}", "--bits=8"]
  run = lambda: subprocess.run(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                               capture_output=True, text=True, timeout=900)
  first = run()
  assert first.returncode == 0, first.stderr[-3000:]
  report_path = tmp_path / "sweep" / "bits_8" / "report.json"
  report = json.load(open(report_path))
  assert report["steps"] == 1 and report["config"]["epochs"] == 0.4  # round(0.4 x (24 // 8))
  stamp = os.path.getmtime(report_path)
  again = run()
  assert again.returncode == 0, again.stderr[-3000:]
  assert os.path.getmtime(report_path) == stamp
  assert "Schedule:" not in again.stderr  # no training was set up
