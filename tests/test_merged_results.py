"""`--merge`: runs finished elsewhere count as finished and join the tables, by fingerprint."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from cmah_jax.experiments import merged as merged_lib
from cmah_jax.experiments import plan as plan_lib
from cmah_jax.experiments import results as results_lib
from cmah_jax.experiments.suites import Suite, get_suite
from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(method, seed, fingerprint, i2p, p2i):
  return {"method": method, "label": method, "group": "baseline", "bits": 16, "seed": seed,
          "fingerprint": fingerprint, "codes": "own", "workdir": "/gone", "steps": None,
          "train_seconds": None, "protocol": "test", "code_usage": None,
          "precision_within_radius": {"i2p": 0.0, "p2i": 0.0},
          "map": {"i2p": i2p, "p2i": p2i}, "map_tie_aware": {"i2p": i2p, "p2i": p2i}}


def test_merged_runs_count_as_finished_and_join_the_tables(tmp_path):
  arg = f"runlocal,data_dir={tmp_path / 'data'}"
  root = tmp_path / "suite"
  runs = plan_lib.plan(get_suite("smoke"), default.get_config(arg), str(root), seeds=[0],
                       methods=["random", "cca_itq"])
  by = {r.method.name: r for r in runs}
  other = tmp_path / "other_machine.json"
  with open(other, "w") as f:  # one run of this plan, and one another config made
    json.dump({"runs": [_row("random", 0, by["random"].fingerprint, 0.11, 0.12),
                        _row("random", 5, "0" * 16, 0.9, 0.9)]}, f)
  cmd = [sys.executable, "-m", "cmah_jax.experiments", "--suite=smoke",
         f"--config=configs/default.py:{arg}", f"--workdir={root}", "--seeds=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")

  def run(*extra):
    out = subprocess.run(cmd + list(extra), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout

  out = run("--methods=random", f"--merge={other}")
  assert (f"merged {other}: 2 of 2 rows new; 1 of its 2 runs are in this plan (1 made by "
          "another config or outside the plan: kept, not shown)") in out
  assert "1 runs, 1 finished, 0 to run" in out
  assert not os.path.exists(by["random"].workdir)  # nothing was trained or evaluated here
  (shown,) = json.load(open(root / "results.json"))["runs"]
  assert shown["map"] == {"i2p": 0.11, "p2i": 0.12}
  assert shown["merged_from"] == str(other)
  # Remembered: later commands need no --merge; merging the same file again adds nothing.
  plan_text = run("--methods=random,cca_itq", "--dry_run")
  assert "random 16 bits seed 0" in plan_text and "finished elsewhere (merged)" in plan_text
  assert "cca_itq 16 bits seed 0" in plan_text and "1 finished, 1 to run" in plan_text
  assert "0 of 2 rows new" in run("--methods=random", f"--merge={other}", "--dry_run")
  # --tables_only rewrites the tables from what is finished, training nothing.
  os.remove(root / "results.json")
  assert "1 rows of the plan at --seeds=1" in run("--tables_only")
  (shown,) = json.load(open(root / "results.json"))["runs"]
  assert shown["map"] == {"i2p": 0.11, "p2i": 0.12}
  assert not os.path.exists(by["cca_itq"].workdir)
  # A run finished here takes precedence over merged rows of its fingerprint.
  os.makedirs(by["random"].workdir)
  with open(by["random"].report_path, "w") as f:
    json.dump({"run_fingerprint": by["random"].fingerprint, "protocol": "test",
               "precision_within_radius": {"i2p": 0.0, "p2i": 0.0},
               "map": {"i2p": {"16": 0.2}, "p2i": {"16": 0.3}},
               "map_tie_aware": {"i2p": {"16": 0.2}, "p2i": {"16": 0.3}}}, f)
  run("--methods=random")
  (shown,) = json.load(open(root / "results.json"))["runs"]
  assert shown["map"] == {"i2p": 0.2, "p2i": 0.3} and "merged_from" not in shown


def test_a_run_merged_under_two_method_names_is_one_row(tmp_path):
  """A results.json written before a method was renamed (`recorded_as`) and one written
  after hold the same run under two names: one row per run and codes, not two (two would
  count the run twice in its mean and std)."""
  before, after = tmp_path / "before.json", tmp_path / "after.json"
  with open(before, "w") as f:
    json.dump({"runs": [_row("ucch", 0, "a" * 16, 0.40, 0.39),
                        _row("ucch", 1, "b" * 16, 0.35, 0.34)]}, f)
  with open(after, "w") as f:
    json.dump({"runs": [_row("ucch_paper", 0, "a" * 16, 0.40, 0.39),
                        _row("ucch", 0, "c" * 16, 0.60, 0.58)]}, f)
  root = str(tmp_path / "root")
  # A dry run reports the same merge and writes nothing.
  lines, preview = merged_lib.merge_files(root, [str(before), str(after)], {"a" * 16},
                                          write=False)
  assert not os.path.exists(root)
  assert lines == merged_lib.merge_files(root, [str(before), str(after)], {"a" * 16})[0]
  assert "merged" in lines[1] and ": 1 of 2 rows new" in lines[1]
  by = merged_lib.load(root)
  assert by == preview
  assert sorted(by) == ["a" * 16, "b" * 16, "c" * 16]
  assert [r["method"] for r in by["a" * 16]] == ["ucch"]  # the first kept, as it was
  # A file merged with the repeat before this was mended still shows the run once.
  with open(merged_lib.path(root)) as f:
    data = json.load(f)
  data["runs"].append(dict(data["runs"][0], method="ucch_paper"))
  with open(merged_lib.path(root), "w") as f:
    json.dump(data, f)
  assert len(merged_lib.load(root)["a" * 16]) == 1


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "is not JSON"),
    ('{"suite": "main"}', "has no 'runs' list"),
    ('{"runs": [{"method": "random", "bits": 16, "seed": 0, "codes": "own", "map": {}}]}',
     "runs[0] lacks fingerprint, map_tie_aware"),
])
def test_a_bad_merge_file_is_named(tmp_path, content, message):
  bad = tmp_path / "results.json"
  if content is not None:
    bad.write_text(content)
  with pytest.raises(ValueError, match=r"--merge: .*" + str(bad).replace(".", r"\.")):
    merged_lib.merge_files(str(tmp_path / "root"), [str(bad)], set())
  with pytest.raises(ValueError) as e:
    merged_lib.read_rows(str(bad))
  assert message in str(e.value)
  assert not os.path.exists(merged_lib.path(str(tmp_path / "root")))  # nothing half-merged


def test_a_bad_merge_file_stops_the_suite_with_its_name(tmp_path):
  out = subprocess.run([sys.executable, "-m", "cmah_jax.experiments", "--suite=smoke",
                        "--config=configs/default.py:runlocal", f"--workdir={tmp_path}",
                        f"--merge={tmp_path / 'missing.json'}", "--dry_run"], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 1
  assert f"--merge: cannot read {tmp_path / 'missing.json'}" in out.stderr
  assert "Traceback" not in out.stderr


def test_the_plan_counts_merged_runs_finished_and_uses_their_pace(tmp_path):
  runs = plan_lib.plan(get_suite("smoke"), default.get_config("steps=100"), str(tmp_path),
                       seeds=[0, 1], bits=[16], methods=["cmah"])
  done = runs[0]
  trained = dict(_row("cmah", 0, done.fingerprint, 0.5, 0.5), steps=100, train_seconds=50.0,
                 codes="itq")
  sign = dict(trained, method="cmah_sign", codes="sign", train_seconds=None)
  lines = plan_lib.describe(runs, {done.fingerprint: [sign, trained]})
  assert "finished elsewhere (merged)" in lines[0] and " to run " in lines[1]
  # 100 steps left at the merged run's 0.5 s/step (its sign row has no time of its own).
  assert lines[-1].startswith("1 finished, 1 to run: 100 training steps left, about 0m50s")


def test_a_renamed_method_keeps_its_runs_and_shows_its_own_name(tmp_path):
  """`recorded_as`: the CMAH of earlier defaults, say, kept as an ablation once a default
  moved. Its runs keep their fingerprint and directory, and its merged rows show under the
  new name (the sign(h) row only where the new name has one)."""
  from cmah_jax.experiments import methods  # pylint: disable=import-outside-toplevel
  base = default.get_config("steps=100")
  (old,) = plan_lib.plan(get_suite("smoke"), base, str(tmp_path), seeds=[0], bits=[16],
                         methods=["cmah"])
  renamed = dataclasses.replace(old.method, name="cmah_before", label="CMAH, earlier defaults",
                                group="ablation", recorded_as=old.method.run_name)
  methods.register(renamed)
  try:
    suite = Suite("t", "test", ((("cmah_before",), (16,)),))
    (run,) = plan_lib.plan(suite, base, str(tmp_path), seeds=[0])
    assert (run.fingerprint, run.workdir) == (old.fingerprint, old.workdir)
    itq = dict(_row("cmah", 0, old.fingerprint, 0.7, 0.6), codes="itq", group="ours")
    sign = dict(itq, method="cmah_sign", codes="sign", group="ablation")
    (shown,) = results_lib.relabel(run, [itq, sign])
    assert (shown["method"], shown["label"], shown["group"]) == (
        "cmah_before", "CMAH, earlier defaults", "ablation")
    assert shown["map"] == itq["map"]
    assert [r["method"] for r in results_lib.relabel(old, [itq, sign])] == [
        "cmah", "cmah_sign"]
    # Merged from before the learned quantiser too ("own" codes): the itq row alone counts.
    own = dict(itq, codes="own", map={"i2p": 0.5, "p2i": 0.5})
    shown = results_lib.relabel(old, [own, itq, sign])
    assert [(r["method"], r["codes"]) for r in shown] == [("cmah", "itq"), ("cmah_sign", "sign")]
    assert [r["codes"] for r in results_lib.relabel(old, [own])] == ["own"]
    # While its config equals the method it was recorded as, the two are one run.
    both = Suite("t", "test", ((("cmah", "cmah_before"), (16,)),))
    with pytest.raises(ValueError, match="methods cmah and cmah_before are one run"):
      plan_lib.plan(both, base, str(tmp_path), seeds=[0])
  finally:
    del methods.METHODS["cmah_before"]


def test_a_baselines_own_quantiser_is_a_baseline_row_and_cmahs_an_ablation(tmp_path):
  """`results.SIGN_ROWS`: a UCCH run's sign(h) codes (UCCH's own quantiser, sign(u)) are
  tabled beside its ITQ row as a second baseline row, judged like it; CMAH's sign(h) codes
  are an ablation of the learned quantiser; a method without an entry shows its ITQ row
  alone."""
  base = default.get_config("steps=100")
  runs = {r.method.name: r for r in plan_lib.plan(
      get_suite("smoke"), base, str(tmp_path), seeds=[0], bits=[16], methods=["cmah"])}
  runs.update((r.method.name, r) for r in plan_lib.plan(
      Suite("t", "test", ((("ucch", "contrastive"), (16,)),)), base, str(tmp_path),
      seeds=[0]))
  shown = {}
  for name, run in runs.items():
    itq = dict(_row(name, 0, run.fingerprint, 0.7, 0.6), codes="itq")
    sign = dict(itq, method=f"{name}_sign", codes="sign", map={"i2p": 0.5, "p2i": 0.4})
    shown[name] = [(r["method"], r["group"], r["codes"]) for r in results_lib.relabel(
        run, [itq, sign])]
  assert shown == {
      "cmah": [("cmah", "ours", "itq"), ("cmah_sign", "ablation", "sign")],
      "ucch": [("ucch", "baseline", "itq"), ("ucch_sign", "baseline", "sign")],
      "contrastive": [("contrastive", "baseline", "itq")]}
  rows = [dict(r, seed=s) for s in range(2) for name, run in runs.items()
          for r in results_lib.relabel(run, [
              dict(_row(name, 0, run.fingerprint, 0.7 + s / 10, 0.6), codes="itq"),
              dict(_row(name, 0, run.fingerprint, 0.5, 0.4), codes="sign")])]
  judged = {v["method"] for v in results_lib.verdicts(results_lib.aggregate(rows))}
  assert judged == {"ucch", "ucch_sign", "contrastive", "cmah_sign"}
