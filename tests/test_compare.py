"""The paired comparison of two methods (`experiments.compare`) on a hand-worked example."""
import json
import os
import subprocess
import sys

import pytest

from cmah_jax.experiments import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(method, seed, i2p, p2i, bits=64):
  """A row of a suite's results.json, as `results.run_row` writes it (the fields
  `results.aggregate` reads)."""
  zeros = {"i2p": 0.0, "p2i": 0.0}
  return {"method": method, "label": method.upper(), "group": "ours", "bits": bits,
          "seed": seed, "map_tie_aware": {"i2p": i2p, "p2i": p2i}, "map": zeros,
          "precision_within_radius": zeros}


ROWS = [_row("a", 0, 0.70, 0.60), _row("a", 1, 0.50, 0.70), _row("a", 2, 0.90, 0.90),
        _row("b", 0, 0.60, 0.65), _row("b", 1, 0.55, 0.50),
        _row("a", 0, 0.10, 0.10, bits=16), _row("b", 0, 0.20, 0.05, bits=16)]


def test_paired_differences_on_the_shared_seeds():
  a = compare.seed_values(ROWS, "a", 64, "map_tie_aware")
  b = compare.seed_values(ROWS, "b", 64, "map_tie_aware")
  assert sorted(a) == [0, 1, 2] and sorted(b) == [0, 1]
  p = compare.paired(a, b)
  # By hand: seed 0 +0.10 / -0.05, seed 1 -0.05 / +0.20; means over seeds 0-1 only.
  assert p["seeds"] == [0, 1]
  assert p["delta"][0] == pytest.approx({"i2p": 0.10, "p2i": -0.05})
  assert p["delta"][1] == pytest.approx({"i2p": -0.05, "p2i": 0.20})
  assert p["mean"]["a"] == pytest.approx({"i2p": 0.60, "p2i": 0.65})
  assert p["mean"]["b"] == pytest.approx({"i2p": 0.575, "p2i": 0.575})
  assert p["mean"]["delta"] == pytest.approx({"i2p": 0.025, "p2i": 0.075})
  assert p["ahead"] == {"i2p": 1, "p2i": 1}


def test_markdown_table_and_clear_errors():
  text = compare.markdown(ROWS, "a", "b", 64)
  assert "| 64 bits | seed 0 | seed 1 | seed 2 | mean over shared seeds |" in text
  assert "| a | 0.700 / 0.600 | 0.500 / 0.700 | 0.900 / 0.900 | 0.600 / 0.650 |" in text
  assert "| b | 0.600 / 0.650 | 0.550 / 0.500 |  | 0.575 / 0.575 |" in text
  assert "| A - B | +0.100 / -0.050 | -0.050 / +0.200 |  | +0.025 / +0.075 |" in text
  assert "1 of 2 shared seeds i2p" in text and "seeds without a partner: [2]" in text
  with pytest.raises(ValueError, match=r"no 64-bit run of 'c' in the results; 64-bit "
                     r"methods: a, b"):
    compare.markdown(ROWS, "a", "c", 64)
  with pytest.raises(ValueError, match="a 64 bits seed 0 has two rows"):
    compare.seed_values(ROWS + [_row("a", 0, 0.1, 0.1)], "a", 64, "map_tie_aware")


def test_several_code_lengths_pool_every_shared_pair():
  """By hand: 64 bits, seeds 0-1: +0.10 / -0.05 and -0.05 / +0.20; 16 bits, seed 0:
  -0.10 / +0.05. Pooled over the three pairs: -0.05 / 3 and +0.20 / 3, A ahead in one of
  three i2p and two of three p2i."""
  pairings = [compare.paired(compare.seed_values(ROWS, "a", k, "map_tie_aware"),
                             compare.seed_values(ROWS, "b", k, "map_tie_aware"))
              for k in (64, 16)]
  pool = compare.pooled(pairings)
  assert pool["pairs"] == 3
  assert pool["delta"] == pytest.approx({"i2p": -0.05 / 3, "p2i": 0.20 / 3})
  assert pool["ahead"] == {"i2p": 1, "p2i": 2}
  text = compare.markdown(ROWS, "a", "b", [64, 16])
  assert text.startswith(compare.markdown(ROWS, "a", "b", 64))
  assert "| A - B | -0.100 / +0.050 | -0.100 / +0.050 |" in text  # the 16-bit table
  assert text.endswith("Over all 3 shared (code length, seed) pairs at 64, 16 bits: mean "
                       "A - B -0.017 / +0.067; A is ahead in 1 of 3 i2p, 2 of 3 p2i.")
  assert compare.markdown(ROWS, "a", "b", [64]) == compare.markdown(ROWS, "a", "b", 64)
  with pytest.raises(ValueError, match="no 32-bit run of 'a'"):
    compare.markdown(ROWS, "a", "b", [64, 32])


def test_importing_beside_the_readme_tool_defines_no_clashing_flag():
  """Imported (not run), compare defines no flag, so `experiments.readme`'s `--results`
  (defined at its import) does not clash with it in one process, as in the test run."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  assert "metric" not in flags.FLAGS  # compare (imported at the top) defined none
  from cmah_jax.experiments import readme  # pylint: disable=import-outside-toplevel,unused-import
  assert "results" in flags.FLAGS


def test_command_line(tmp_path):
  path = tmp_path / "results.json"
  path.write_text(json.dumps({"runs": ROWS}))
  cmd = [sys.executable, "-m", "cmah_jax.experiments.compare", f"--results={path}",
         "--bits=64"]
  out = subprocess.run(cmd + ["a", "b"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| A - B | +0.100 / -0.050 |" in out.stdout
  bad = subprocess.run(cmd + ["a", "zz"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 1 and "no 64-bit run of 'zz'" in bad.stderr
  assert "Traceback" not in bad.stderr
  both = subprocess.run(cmd[:-1] + ["--bits=64,16", "a", "b"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert both.returncode == 0 and "Over all 3 shared" in both.stdout, both.stderr[-2000:]
  bad = subprocess.run(cmd[:-1] + ["--bits=64,x", "a", "b"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert bad.returncode == 1 and "code lengths are integers" in bad.stderr
  assert "Traceback" not in bad.stderr
