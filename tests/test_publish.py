"""`experiments.publish`: a suite's tables replace the published ones only when no
published row is lost."""
import json
import os
import subprocess
import sys

import pytest

from cmah_jax.experiments import publish as publish_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(method, seed, fingerprint, codes="own"):
  return {"method": method, "bits": 16, "seed": seed, "fingerprint": fingerprint,
          "codes": codes, "map": {"i2p": 0.1, "p2i": 0.2},
          "map_tie_aware": {"i2p": 0.1, "p2i": 0.2}}


def _write(path, rows, md=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"runs": rows}))
  if md is not None:
    path.with_suffix(".md").write_text(md)


def test_publish_copies_tables_and_names_the_new_rows(tmp_path):
  suite = tmp_path / "suite" / "results.json"
  _write(suite, [_row("cmah", 0, "a"), _row("cmah", 0, "a", "itq"), _row("cmah", 1, "b")],
         md="new table")
  (tmp_path / "suite" / "map_vs_bits.png").write_bytes(b"png")
  published = tmp_path / "docs" / "tuning_validation.json"
  _write(published, [_row("cmah", 0, "a"), _row("cmah", 0, "a", "itq")], md="old table")
  lines = publish_lib.publish(str(suite), str(published), str(tmp_path / "docs" / "p.png"))
  assert lines[0].endswith("2 -> 3 rows, none lost; 1 new")
  assert lines[1] == "[publish]   new: cmah 16 bits seed 1 (own codes)"
  assert json.loads(published.read_text())["runs"][2]["fingerprint"] == "b"
  assert (tmp_path / "docs" / "tuning_validation.md").read_text() == "new table"
  assert (tmp_path / "docs" / "p.png").read_bytes() == b"png"


def test_publish_refuses_to_lose_a_row_and_writes_nothing(tmp_path):
  suite = tmp_path / "suite" / "results.json"
  _write(suite, [_row("cmah", 0, "a")], md="new table")
  published = tmp_path / "docs" / "results.json"
  old = [_row("cmah", 0, "a"), _row("cmah", 0, "a", "itq"), _row("ucch", 2, "c")]
  _write(published, old, md="old table")
  with pytest.raises(ValueError, match=r"lacks 2 of the 3 rows .*cmah 16 bits seed 0 "
                     r"\(itq codes\); ucch 16 bits seed 2 \(own codes\)"):
    publish_lib.publish(str(suite), str(published))
  assert json.loads(published.read_text())["runs"] == old
  assert (tmp_path / "docs" / "results.md").read_text() == "old table"


def test_importing_it_beside_the_readme_tool_defines_no_clashing_flag():
  """Imported (not run), publish defines no flag: `experiments.readme` defines `--results`
  at its import, and both are imported in one test process."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  assert "plot_to" not in flags.FLAGS
  from cmah_jax.experiments import readme  # pylint: disable=import-outside-toplevel,unused-import
  assert "results" in flags.FLAGS


def test_publish_command_names_a_file_that_is_not_a_suites(tmp_path):
  bad = tmp_path / "results.json"
  bad.write_text(json.dumps({"rows": []}))
  out = subprocess.run([sys.executable, "-m", "cmah_jax.experiments.publish",
                        f"--results={bad}", f"--to={tmp_path / 'out.json'}"],
                       cwd=REPO, capture_output=True, text=True, check=False)
  assert out.returncode != 0
  assert f"publish: {bad} has no 'runs' list" in out.stderr
  assert not (tmp_path / "out.json").exists()
