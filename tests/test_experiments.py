"""The comparison suite: plan, fingerprints that refuse a changed config, aggregation, and
a runlocal suite end to end (resumes by skipping finished runs)."""
import dataclasses
import functools
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import config as config_lib
from cmah_jax.config import LINEAR_PATCHES, PAPER_PAIRS
from cmah_jax import losses
from cmah_jax import resume
from cmah_jax.experiments import gradients
from cmah_jax.experiments import methods as methods_lib
from cmah_jax.experiments import plan as plan_lib
from cmah_jax.experiments import representation
from cmah_jax.experiments import results as results_lib
from cmah_jax.experiments import suites as suites_lib
from cmah_jax.experiments.methods import Method, get_method
from cmah_jax.experiments.suites import get_suite
from cmah_jax.models import CMAH, init_variables, resolve_config
from cmah_jax.models import variants as variants_lib
from cmah_jax.objectives import get_objective
from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_covers_the_suite_with_distinct_fingerprints(tmp_path):
  # `main`, what a user runs: 6 methods x 4 code lengths + 7 ablations x 2 code lengths
  # + CMAH with MAE's linear patch embedding (round 25's ablation) at 4; 3 seeds each.
  main = plan_lib.plan(get_suite("main"), default.get_config(), str(tmp_path), seeds=range(3))
  assert len(main) == (6 * 4 + 7 * 2 + 4) * 3
  kept = {name for names, _ in suites_lib.EARLIER_DEFAULTS for name in names}
  assert kept and not kept & {r.method.name for r in main}
  # `published` plans the same runs, then the earlier defaults it keeps: CMAH,
  # contrastive-only and UCCH of rounds 10-16 at 4 lengths, CMAH at L_2D weight 1 at 3,
  # the bound (of both) and the 5 ablations of rounds 10-16 at 64 bits, UCCH at its
  # published temperature at 16 and 32 bits, contrastive-only of rounds 18-24 at 4
  # lengths, and their bound and paper-masked-pair ablation at 64; 3 seeds each.
  runs = plan_lib.plan(get_suite("published"), default.get_config(), str(tmp_path),
                       seeds=range(3))
  assert len(runs) == len(main) + (3 * 4 + 3 + 7 + 2 + 4 + 2) * 3
  assert [(r.fingerprint, r.workdir) for r in runs[:len(main)]] == [
      (r.fingerprint, r.workdir) for r in main]
  assert len({r.fingerprint for r in runs}) == len(runs)
  assert len({r.workdir for r in runs}) == len(runs)
  by = {(r.method.name, r.bits, r.seed): r for r in runs}
  assert by["contrastive", 16, 0].config.loss.lambda_r == 0.0
  assert by["no_cross_attention", 64, 1].config.model.fusion_cross_attention is False
  assert by["ucch", 32, 2].config.loss.objective == "ucch"
  # UCCH at its published temperature is the run `ucch` was before the temperature was a
  # field: the method as it was then (no temperature override), fingerprinted by the
  # same `run_fingerprint`, gives its fingerprint (the recorded values themselves:
  # test_every_published_run_keeps_its_fingerprint).
  paper = by["ucch_paper", 16, 1]
  assert paper.config.loss.ucch_temperature == 0.9 != by["ucch", 16, 1].config.loss.ucch_temperature
  ucch_then = Method("ucch", "UCCH (point tower for text)", "baseline", "[test]", "train",
                     (("loss.objective", "ucch"), ("loss.pairs", "full_full"),
                      ("loss.lambda_r", 0.0)))
  assert "ucch_temperature" not in paper.config.fingerprint_dict()["loss"]
  assert paper.fingerprint == plan_lib.run_fingerprint(ucch_then, paper.config)
  assert by["cmah", 128, 2].config.model.bits == 128 and by["cmah", 128, 2].config.seed == 2
  # Today's defaults (per-axis scaling since round 16b), the paper's objective, and the
  # defaults of rounds 10-16.
  def objective(run):
    c = run.config
    return c.loss.temperature, c.input.point_scale_isotropic, c.loss.image_recon_weight
  assert objective(by["cmah", 16, 0]) == objective(by["no_point_recon", 64, 1]) == (
      0.2, False, 0.1)
  assert objective(by["cmah_paper", 16, 0]) == (0.07, False, 1.0)
  for name in ("cmah_r10", "contrastive_r10", "supervised_r10", "no_point_recon_r10"):
    assert objective(by[name, 64, 1]) == (0.2, True, 0.1), name
  assert objective(by["cmah_img1", 16, 0]) == (0.2, True, 1.0)
  assert by["no_point_recon_r10", 64, 1].config.loss.use_point_recon is False
  assert by["no_point_recon_r10", 64, 1].workdir.split("/runs/")[1].startswith(
      "no_point_recon/")


def test_a_subset_runs_in_the_order_listed_and_unknown_names_are_refused(tmp_path):
  suite, base = get_suite("published"), default.get_config()
  whole = [(r.method.name, r.bits) for r in plan_lib.plan(suite, base, "/r", seeds=[0])]
  # The suite's own order: its blocks, each method at each of its lengths.
  assert whole[:4] == [("cmah", 16), ("cmah", 32), ("cmah", 64), ("cmah", 128)]
  runs = plan_lib.plan(suite, base, "/r", seeds=[0, 1], bits=[64, 16],
                       methods=["no_image_recon", "cmah_r10", "cmah"])
  assert [(r.method.name, r.bits, r.seed) for r in runs] == [
      (m, b, s) for m in ("no_image_recon", "cmah_r10", "cmah") for b in (64, 16)
      for s in (0, 1)]
  with pytest.raises(ValueError, match=r"suite 'published' has no method 'contrastiv'; its "
                     r"methods: cmah, random, "):
    plan_lib.plan(suite, base, "/r", seeds=[0], methods=["cmah", "contrastiv"])
  # A method of another suite is refused with the suites that have it.
  with pytest.raises(ValueError, match=r"suite 'published' has no method 'cmah_t0.2_iso'; "
                     r".*; 'cmah_t0.2_iso' is in suite 'tuning'$"):
    plan_lib.plan(suite, base, "/r", seeds=[0], methods=["cmah_t0.2_iso"])
  with pytest.raises(ValueError, match=r"suite 'main' has no method 'cmah_r10'; .*; "
                     r"'cmah_r10' is in suite 'published'$"):
    plan_lib.plan(get_suite("main"), base, "/r", seeds=[0], methods=["cmah_r10"])
  with pytest.raises(ValueError, match=r"suite 'ablations' has no code length 32, 128; "
                     r"its lengths: 16, 64"):
    plan_lib.plan(get_suite("ablations"), base, "/r", seeds=[0], bits=[16, 32, 128])


def test_changed_config_is_never_reused(tmp_path):
  suite = get_suite("smoke")
  (run,) = plan_lib.plan(suite, default.get_config(), str(tmp_path), seeds=[0], bits=[16],
                         methods=["cmah"])
  os.makedirs(run.workdir)
  with open(run.report_path, "w") as f:
    json.dump({"run_fingerprint": run.fingerprint}, f)
  assert run.finished()
  changed = default.get_config()
  changed.loss.temperature = 0.3  # the default is 0.2
  (other,) = plan_lib.plan(suite, changed, str(tmp_path), seeds=[0], bits=[16],
                           methods=["cmah"])
  assert other.fingerprint != run.fingerprint and other.workdir != run.workdir
  # A field added later (config.ADDED_LATER) is left out of the fingerprint at its neutral
  # value, so finished runs stay finished, and counts as soon as it is set.
  neutral = default.get_config()
  neutral.loss.point_recon_weight = 1.0
  (same,) = plan_lib.plan(suite, neutral, str(tmp_path), seeds=[0], bits=[16],
                          methods=["cmah"])
  assert same.fingerprint == run.fingerprint
  assert "point_recon_weight" not in same.config.fingerprint_dict()["loss"]
  weighted = default.get_config()
  weighted.loss.point_recon_weight = 300.0
  (heard,) = plan_lib.plan(suite, weighted, str(tmp_path), seeds=[0], bits=[16],
                           methods=["cmah"])
  assert heard.fingerprint != run.fingerprint
  assert heard.config.fingerprint() != same.config.fingerprint()
  assert not other.finished()
  # A report whose fingerprint differs (a run of another config in that directory) does
  # not count as finished either.
  with open(run.report_path, "w") as f:
    json.dump({"run_fingerprint": other.fingerprint}, f)
  assert not run.finished()


def test_no_jobs_or_no_seeds_is_refused_by_name(tmp_path):
  """--jobs=0 would wait forever for a free slot; --seeds=0 plans nothing."""
  for flag in ("--jobs=0", "--seeds=0"):
    out = subprocess.run(
        [sys.executable, "-m", "cmah_jax.experiments", "--suite=smoke", "--dry_run",
         f"--config=configs/default.py:runlocal,data_dir={tmp_path / 'data'}",
         f"--workdir={tmp_path / 'suite'}", flag], cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert flag in out.stderr and "must be at least 1" in out.stderr


def test_where_the_files_are_and_how_often_a_run_logs_plan_no_new_run(tmp_path):
  """The same data by another path (another machine's), or other logging, checkpointing
  and evaluation batching, give the same runs; what is trained does not."""
  def runs(args="", **top):
    c = default.get_config(args)
    c.update(top)
    return [(r.fingerprint, r.workdir) for r in plan_lib.plan(
        get_suite("smoke"), c, str(tmp_path), seeds=[0, 1])]

  assert runs(f"data_dir={tmp_path}/elsewhere/data") == runs() == runs(
      log_every_steps=5, checkpoint_every_steps=800, keep_checkpoints=5,
      eval_every_steps=100)
  moved = default.get_config()
  moved.dataset.manual_dir = str(tmp_path / "downloads")
  moved.input.prefetch, moved.input.eval_batch_size = 4, 512
  assert runs() == [(r.fingerprint, r.workdir) for r in plan_lib.plan(
      get_suite("smoke"), moved, str(tmp_path), seeds=[0, 1])]
  assert not set(runs()) & set(runs(total_steps=2401))
  assert not set(runs()) & set(runs("batch=32"))
  # Only fields a resumed run may change, read at configs/default.py's values.
  assert set(plan_lib.FINGERPRINT_AS) <= resume.FREE_FIELDS
  resolved = config_lib.resolve(default.get_config()).to_dict()
  for path, value in plan_lib.FINGERPRINT_AS.items():
    node = resolved
    for key in path.split("."):
      node = node[key]
    assert node == value, path


def test_aggregate_mean_and_sample_std():
  rows = [{"method": "m", "label": "M", "group": "ours", "bits": 16, "seed": s,
           "map": {"i2p": v, "p2i": 2 * v}, "map_tie_aware": {"i2p": v, "p2i": v},
           "precision_within_radius": {"i2p": 0.0, "p2i": 1.0}}
          for s, v in enumerate([0.2, 0.4, 0.9])]
  (agg,) = results_lib.aggregate(rows)
  assert agg["n"] == 3 and agg["seeds"] == [0, 1, 2]
  assert agg["map/i2p/mean"] == pytest.approx(0.5)
  # Sample std of (0.2, 0.4, 0.9): sqrt(((-.3)^2 + (-.1)^2 + .4^2) / 2) = sqrt(0.13).
  assert agg["map/i2p/std"] == pytest.approx(np.sqrt(0.13))
  assert agg["map/p2i/std"] == pytest.approx(2 * np.sqrt(0.13))
  md = results_lib.markdown([agg], "t", "p")
  assert "0.500 ± 0.361 / 1.000 ± 0.721" in md
  assert "## precision within Hamming radius 2" in md
  assert "## precision within Hamming radius 3" in results_lib.markdown([agg], "t", "p", 3)
  # A seed recorded twice would count twice in the mean: refused, named.
  with pytest.raises(ValueError, match="m 16 bits seed 1 has two rows"):
    results_lib.aggregate(rows + [dict(rows[1])])


def test_verdict_needs_a_margin_above_the_larger_std_in_both_directions():
  def rows(method, group, i2p, p2i):
    return [{"method": method, "label": method.upper(), "group": group, "bits": 16,
             "seed": s, "map": {"i2p": a, "p2i": b}, "map_tie_aware": {"i2p": a, "p2i": b},
             "precision_within_radius": {"i2p": 0.0, "p2i": 0.0}}
            for s, (a, b) in enumerate(zip(i2p, p2i))]
  # ours: i2p mean 0.6 std 0.1; p2i mean 0.5 std 0.0.
  aggs = results_lib.aggregate(
      rows("cmah", "ours", [0.5, 0.6, 0.7], [0.5, 0.5, 0.5])
      + rows("a", "baseline", [0.45, 0.45, 0.45], [0.3, 0.3, 0.3])     # i2p +0.15 > 0.1
      + rows("b", "baseline", [0.55, 0.55, 0.55], [0.3, 0.3, 0.3])     # i2p +0.05 < 0.1
      + rows("c", "ablation", [0.1, 0.1, 0.1], [0.48, 0.5, 0.52])      # p2i +0.0 < 0.02
      + rows("sup", "bound", [0.8, 0.8, 0.8], [1.0, 1.0, 1.0])
      + rows("old", "earlier", [0.9, 0.9, 0.9], [0.9, 0.9, 0.9]))   # tabled, not judged
  by = {r["method"]: r for r in results_lib.verdicts(aggs)}
  assert set(by) == {"a", "b", "c", "sup"}
  assert by["a"]["wins"] and not by["b"]["wins"] and not by["c"]["wins"]
  assert by["a"]["margin/i2p"] == pytest.approx(0.15)
  assert by["a"]["needed/i2p"] == pytest.approx(0.1)
  assert by["c"]["needed/p2i"] == pytest.approx(0.02)
  assert by["sup"]["fraction/i2p"] == pytest.approx(0.75)
  assert by["sup"]["fraction/p2i"] == pytest.approx(0.5)
  # Paired by seed: i2p 0.5/0.6/0.7 against B's 0.55 in every seed is ahead in 2 of 3;
  # p2i 0.5 against C's 0.48/0.5/0.52 only in seed 0 (a tie is not ahead).
  assert by["b"]["paired/i2p"] == (2, 3) and by["b"]["paired/p2i"] == (3, 3)
  assert by["c"]["paired/i2p"] == (3, 3) and by["c"]["paired/p2i"] == (1, 3)
  md = results_lib.verdict_markdown(aggs)
  assert "| 16 | B | -0.000 (0.100)" not in md and "**does not win**" in md
  assert "| 16 | C | +0.500 (0.100) | +0.000 (0.020) | 3/3; 1/3 | **does not win** |" in md
  assert "75.0% / 50.0%" in md


def test_the_trained_methods_of_earlier_defaults_are_the_ones_not_judged():
  """A trained method pinned to earlier defaults (of the objective or augmentation, rounds
  10-16; of the image tokens, rounds 18-24) is in group "earlier" (tabled beside today's
  runs, left out of the verdicts), and every method of that group is one; tuning
  candidates (the carve's suite, decided by `compare`) keep their own group. A pin that
  defines a method does not make it earlier: L_c's pairs (the paper's, until round 18)
  for the bound, which keeps them, and the ablations `paper_masked_pair`, `cmah_paper`
  and `no_reconstruction`; MAE's linear patch embedding (until round 25) for the
  ablations `linear_patches` and `cmah_paper`."""
  earlier = {n for n, m in methods_lib.METHODS.items() if m.group == "earlier"}
  pins = {n: dict(m.pinned) for n, m in methods_lib.METHODS.items()
          if m.kind == "train" and m.group != "candidate"}
  defined_by_pins = {"supervised": PAPER_PAIRS, "paper_masked_pair": PAPER_PAIRS,
                     "no_reconstruction": PAPER_PAIRS, "linear_patches": LINEAR_PATCHES,
                     "cmah_paper": {**PAPER_PAIRS, **LINEAR_PATCHES}}
  assert {n: pins[n] for n in defined_by_pins} == defined_by_pins
  assert earlier == {n for n, pin in pins.items() if pin and n not in defined_by_pins}
  assert {"cmah_r10", "contrastive_r10", "supervised_r10", "cmah_img1", "contrastive_r18",
          "supervised_r18", "paper_masked_pair_r18"} <= earlier
  for n in (n for n in earlier if n.endswith("_r18")):  # today's twin + the linear tokens
    assert pins[n] == {**LINEAR_PATCHES, **pins[n[:-len("_r18")]]}, n
  assert not {"cmah", "contrastive", "supervised", "cmah_paper", "cca_itq",
              "paper_masked_pair", "linear_patches"} & earlier
  # The sign(h) row of such a method is not judged either; today's CMAH's is an ablation.
  sign = {"method": "cmah", "label": "CMAH", "group": "ours", "codes": "sign"}
  def shown_group(name):
    (row,) = results_lib.relabel(types.SimpleNamespace(method=get_method(name)), [sign])
    return row["group"]
  assert (shown_group("cmah_r10"), shown_group("cmah")) == ("earlier", "ablation")


def test_no_reconstruction_is_cmah_without_lambda_r_and_contrastive_with_the_masked_pair(
    tmp_path):
  """Round 17's ablation differs from the CMAH of its day (`paper_masked_pair` since
  round 18) only in the reconstruction weight and from contrastive-only only in L_c's
  pairs (resolved configs, field by field)."""
  runs = plan_lib.plan(get_suite("tuning"), default.get_config("steps=100"), str(tmp_path),
                       seeds=[0], bits=[64],
                       methods=["no_reconstruction", "paper_masked_pair", "contrastive"])
  ablation, cmah, contrastive = (dataclasses.asdict(r.config) for r in runs)
  assert resume.config_diff(cmah, ablation) == [("loss.lambda_r", 1.0, 0.0)]
  assert resume.config_diff(contrastive, ablation) == [
      ("loss.pairs", ("full_full",), ("full_full", "masked_masked"))]
  assert ablation["loss"]["pairs"] == ("full_full", "masked_masked")


def test_round18_cmah_differs_from_the_paper_masked_pair_only_in_the_masked_pair(tmp_path):
  """Today's CMAH (round 18) is the CMAH of rounds 16b-17 (`paper_masked_pair`) with
  L_c's masked-masked pair replaced by the masked point view against the full image
  (resolved configs, field by field). That it is the run its candidate
  `masked_point_full_image` was (fingerprint, directory, config) is checked with the other
  earlier defaults, in `test_the_runs_of_earlier_defaults_are_their_pinned_methods_today`."""
  ablation, cmah = plan_lib.plan(get_suite("tuning"), default.get_config("steps=100"),
                                 str(tmp_path), seeds=[0], bits=[64],
                                 methods=["paper_masked_pair", "cmah"])
  assert resume.config_diff(dataclasses.asdict(ablation.config),
                            dataclasses.asdict(cmah.config)) == [
      ("loss.pairs", ("full_full", "masked_masked"), ("full_full", "masked_point_full_image"))]


@pytest.mark.parametrize("method, context", [("code_context", "code"),  # round 26
                                             ("code_beside_tokens", "tokens_and_code")])  # 27
def test_rounds_26_27_candidates_differ_from_cmah_only_in_the_fusion_context(tmp_path, method,
                                                                             context):
  """Rounds 26-27's candidates are today's CMAH with the decoders reading the other
  modality's code, instead of or beside its tokens (resolved configs, field by field);
  today's CMAH's fingerprint leaves the new field out at its neutral "tokens", the
  candidate's records it."""
  cmah, candidate = plan_lib.plan(get_suite("tuning"), default.get_config("steps=100"),
                                  str(tmp_path), seeds=[0], bits=[64],
                                  methods=["cmah", method])
  assert resume.config_diff(dataclasses.asdict(cmah.config),
                            dataclasses.asdict(candidate.config)) == [
      ("model.fusion_context", "tokens", context)]
  assert "fusion_context" not in cmah.config.fingerprint_dict()["model"]
  assert candidate.config.fingerprint_dict()["model"]["fusion_context"] == context


def test_round24_candidate_differs_from_cmah_only_in_the_point_mask_ratio(tmp_path):
  """Round 24's `point_mask0.75` is the CMAH of its day (`linear_patches` since round 25)
  with 75% of the point groups masked (resolved configs, field by field), which keeps 8
  of the 32 groups."""
  cmah, candidate = plan_lib.plan(get_suite("tuning"), default.get_config("steps=100"),
                                  str(tmp_path), seeds=[0], bits=[64],
                                  methods=["linear_patches", "point_mask0.75"])
  assert resume.config_diff(dataclasses.asdict(cmah.config),
                            dataclasses.asdict(candidate.config)) == [
      ("model.point_mask_ratio", 0.6, 0.75)]
  from cmah_jax.ops import random_mask  # pylint: disable=import-outside-toplevel
  kept = random_mask(jax.random.key(0), 1, candidate.config.model.num_groups,
                     candidate.config.model.point_mask_ratio)[0]
  assert kept.shape == (1, 8)


def test_round25_cmah_differs_from_linear_patches_only_in_the_image_stem(tmp_path,
                                                                        monkeypatch):
  """Since round 25 CMAH is the CMAH of rounds 18-24 (`linear_patches`) with the hMLP
  image stem (resolved configs, field by field): 4x4-pixel blocks to width 32, then one
  2x2 merge, for the `small` variant's 8-pixel patches. The linear one leaves the field
  out of its fingerprint (added later). Today's CMAH is the run round 25's candidate
  `image_stem` was, planned under the defaults of its day (fingerprint, directory and
  config), and the `paper` switch restores MAE's linear embedding."""
  old, candidate = plan_lib.plan(get_suite("tuning"), default.get_config("steps=100"),
                                 str(tmp_path), seeds=[0], bits=[64],
                                 methods=["linear_patches", "cmah"])
  assert resume.config_diff(dataclasses.asdict(old.config),
                            dataclasses.asdict(candidate.config)) == [
      ("model.image_stem_dims", (), (32,))]
  assert candidate.config.model.patch_size == 8
  assert "image_stem_dims" not in old.config.fingerprint_dict()["model"]
  assert candidate.config.fingerprint_dict()["model"]["image_stem_dims"] == [32]
  with monkeypatch.context() as m:
    _as_then(m, "image_stem", (("model.overrides.image_stem_dims", (32,)),))
    m.setitem(variants_lib.VARIANTS, "small", {
        k: v for k, v in variants_lib.VARIANTS["small"].items() if k != "image_stem_dims"})
    (then,) = plan_lib.plan(suites_lib.Suite("tuning", "then", ((("image_stem",), (64,)),),
                                             protocol="validation"),
                            default.get_config("steps=100"), str(tmp_path), seeds=[0])
  assert (candidate.fingerprint, candidate.workdir) == (then.fingerprint, then.workdir)
  assert candidate.config.to_dict() == then.config.to_dict()
  paper = config_lib.resolve(default.get_config("paper"))
  assert paper.model.image_stem_dims == ()
  # A run's config.json reads back as the same, hashable config (the model is a static
  # field of the Linen module), stem widths a tuple again.
  back = config_lib.ExperimentConfig.from_dict(json.loads(json.dumps(candidate.config.to_dict())))
  assert back == candidate.config and back.model.image_stem_dims == (32,)
  hash(back.model)


def test_one_seed_has_no_spread_and_never_wins():
  def rows(method, group, seeds, i2p, p2i):
    return [{"method": method, "label": method.upper(), "group": group, "bits": 16,
             "seed": s, "map": {"i2p": i2p + 0.01 * s, "p2i": p2i},
             "map_tie_aware": {"i2p": i2p, "p2i": p2i},
             "precision_within_radius": {"i2p": 0.0, "p2i": 0.0}} for s in range(seeds)]
  aggs = results_lib.aggregate(rows("cmah", "ours", 1, 0.7, 0.6)
                               + rows("a", "baseline", 3, 0.2, 0.2)    # far behind, 3 seeds
                               + rows("b", "baseline", 1, 0.8, 0.1)    # ahead in i2p only
                               + rows("c", "baseline", 2, 0.1, 0.1))
  by = {r["method"]: r for r in results_lib.verdicts(aggs)}
  # A margin of +0.5 against 3 seeds is still not a win when ours has one seed.
  assert not by["a"]["spread"] and by["a"]["ahead"] and not by["a"]["wins"]
  assert not by["b"]["ahead"] and not by["b"]["wins"]
  md = results_lib.verdict_markdown(aggs)
  assert ("| 16 | A (3 seeds; ours 1) | +0.490 (no spread) | +0.400 (no spread) | 1/1; 1/1 | "
          "ahead, not yet a win |") in md
  assert ("| 16 | B (1 seed; ours 1) | -0.100 (no spread) | +0.500 (no spread) | 0/1; 1/1 | "
          "**behind** |") in md
  table = results_lib.markdown(aggs, "t", "p")
  assert "| CMAH | 0.700 / 0.600 (1 seed) |" in table          # no "± 0.000"
  assert "| A | 0.210 ± 0.010 / 0.200 ± 0.000 |" in table      # the table's most seeds
  assert "| C | 0.105 ± 0.007 / 0.100 ± 0.000 (2 seeds) |" in table


def test_code_usage_table_means_over_seeds_and_skips_old_reports():
  def row(method, seed, distinct, majority):
    usage = {m: {"distinct": distinct, "majority_fraction": majority}
             for m in ("image", "point")}
    usage["image"] = {"distinct": distinct - 10, "majority_fraction": majority}
    return {"method": method, "label": method.upper(), "group": "ours", "bits": 16,
            "seed": seed, "map": {"i2p": 0.5, "p2i": 0.5},
            "map_tie_aware": {"i2p": 0.5, "p2i": 0.5},
            "precision_within_radius": {"i2p": 0.0, "p2i": 0.0},
            "code_usage": usage if distinct else None}
  aggs = results_lib.aggregate([row("a", 0, 100, 0.5), row("a", 1, 120, 0.7),
                                row("b", 0, 50, 0.6), row("b", 1, 0, 0.0)])  # b1: old report
  by = {a["method"]: a for a in aggs}
  assert by["a"]["usage/point/distinct"] == 110 and by["a"]["usage/image/distinct"] == 100
  assert by["a"]["usage/point/majority_fraction"] == pytest.approx(0.6)
  assert "usage/point/distinct" not in by["b"]   # a mean over some seeds only would mislead
  md = results_lib.markdown(aggs, "t", "p")
  assert "| A | 100 / 110; 0.60 / 0.60 |" in md and "| B |  |" in md


def test_runlocal_suite_runs_and_resumes(tmp_path):
  cmd = [sys.executable, "-m", "cmah_jax.experiments", "--suite=smoke",
         f"--config=configs/default.py:runlocal,steps=2,data_dir={tmp_path / 'data'}",
         f"--workdir={tmp_path / 'suite'}", "--seeds=1", "--methods=cmah,random,cca_itq",
         "--jobs=2"]
  cpus = sorted(os.sched_getaffinity(0))
  pinned = len(cpus) >= 2  # the two running runs on one CPU each (`--cpus_per_job`)
  if pinned:
    cmd.append("--cpus_per_job=1")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  data = json.load(open(tmp_path / "suite" / "results.json"))
  if pinned:
    assert f"pinned to CPUs [({cpus[0]},), ({cpus[1]},)]" in out.stdout, out.stdout[-2000:]
    for r in data["runs"]:  # each worker logs the CPUs it ran on: one of the two slots
      logged = re.findall(r"\[worker\] \S+ pid \d+ on CPUs \[(\d+)\]",
                          open(os.path.join(r["workdir"], "log.txt")).read())
      assert logged and set(logged) <= {str(cpus[0]), str(cpus[1])}, (r["method"], logged)
  # The trained run gives two rows: its learned quantiser's codes, and its sign(h) codes.
  assert sorted(r["method"] for r in data["runs"]) == ["cca_itq", "cmah", "cmah_sign",
                                                       "random"]
  for r in data["runs"]:
    report = json.load(open(os.path.join(r["workdir"], "report.json")))
    scored = report["itq"] if r["method"] == "cmah" else report
    assert r["map"]["i2p"] == scored["map"]["i2p"]["16"]
    assert r["codes"] == {"cmah": "itq", "cmah_sign": "sign"}.get(r["method"], "own")
    assert report["run_fingerprint"] == r["fingerprint"]
    # Code usage of the database codes, as metrics.code_usage computes it from the codes.
    assert r["code_usage"] == {m: {k: scored["code_usage"]["database"][m][k]
                                   for k in results_lib.USAGE} for m in ("image", "point")}
    assert 1 <= r["code_usage"]["point"]["distinct"] <= report["num_database"]
  assert (tmp_path / "suite" / "map_vs_bits.png").stat().st_size > 0
  assert "random codes" in (tmp_path / "suite" / "results.md").read_text()
  assert "## code usage of the database codes" in (tmp_path / "suite" / "results.md").read_text()
  # A trained run whose report predates the quantiser is requantised, not retrained.
  cmah_dir = next(r["workdir"] for r in data["runs"] if r["method"] == "cmah")
  report = json.load(open(os.path.join(cmah_dir, "report.json")))
  with open(os.path.join(cmah_dir, "report.json"), "w") as f:
    json.dump({k: v for k, v in report.items() if k != "itq"}, f)
  metrics_before = open(os.path.join(cmah_dir, "metrics.jsonl")).read()
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "3 finished, 0 to run" in again.stdout
  assert "ITQ 1/1 cmah 16 bits seed 0: done" in again.stdout, again.stdout[-2000:]
  assert json.load(open(os.path.join(cmah_dir, "report.json")))["itq"] == report["itq"]
  assert open(os.path.join(cmah_dir, "metrics.jsonl")).read() == metrics_before
  # A run of a subset (here: one method) keeps every finished run of the suite in the tables.
  subset = [a for a in cmd if not a.startswith("--methods")] + ["--methods=random"]
  part = subprocess.run(subset, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert part.returncode == 0 and "1 finished, 0 to run" in part.stdout, part.stdout[-2000:]
  data = json.load(open(tmp_path / "suite" / "results.json"))
  assert sorted(r["method"] for r in data["runs"]) == ["cca_itq", "cmah", "cmah_sign",
                                                       "random"]
  # The binarisation diagnostic on the trained run: its code-ranked cross-modal mAP is the
  # report's (scored there by the evaluator's own path).
  run = next(r for r in data["runs"] if r["method"] == "cmah_sign")
  rep = subprocess.run([sys.executable, "-m", "cmah_jax.experiments.representation",
                        f"--workdir={run['workdir']}", "--quantizer_seeds=2",
                        "--reduced_bits=8,16"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert rep.returncode == 0, rep.stdout[-2000:] + rep.stderr[-2000:]
  maps = json.load(open(os.path.join(run["workdir"], "representation.json")))["map"]
  report = json.load(open(os.path.join(run["workdir"], "report.json")))
  for d in ("i2p", "p2i"):
    assert maps[d]["code"] == pytest.approx(report["map"][d]["16"], abs=1e-12)
  assert all(0 < m[k] <= 1 for m in maps.values() for k in ("code", "continuous"))
  # The quantiser refitted with the run's own seed is the run's quantiser: its tie-aware
  # mAP is the report's learned-quantiser figure (scored by the evaluator's path).
  spread = json.load(open(os.path.join(run["workdir"], "representation.json")))[
      "quantizer_seeds"]
  run_seed = str(json.load(open(os.path.join(run["workdir"], "config.json")))["config"]["seed"])
  assert sorted(spread["per_seed"]) == ["0", "1"] and run_seed in spread["per_seed"]
  # Codes cut to all 16 bits are the quantiser of ITQ seed 0; cut to 8, they still score.
  reduced = json.load(open(os.path.join(run["workdir"], "representation.json")))[
      "reduced_codes"]
  assert sorted(reduced) == ["16", "8"] and all(0 < v <= 1 for v in reduced["8"].values())
  assert reduced["16"] == pytest.approx(
      {d: spread["per_seed"]["0"][d] for d in ("i2p", "p2i")}, abs=1e-12)
  for d in ("i2p", "p2i"):
    assert spread["per_seed"][run_seed][d] == pytest.approx(
        report["itq"]["map_tie_aware"][d]["16"], abs=1e-12)
    values = [spread["per_seed"][s][d] for s in ("0", "1")]
    assert spread[d]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert spread[d]["range"] == pytest.approx(abs(values[0] - values[1]), abs=1e-12)
    assert spread[d]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
  assert "learned quantiser over 2 ITQ seeds" in rep.stdout
  spectra = json.load(open(os.path.join(run["workdir"], "representation.json")))[
      "spectrum_dims"]
  assert sorted(spectra) == ["image/h", "image/pre_tanh", "point/h", "point/pre_tanh"]
  for dims in spectra.values():  # 16 bits: between 1 and 16 directions, more for more
    counts = [dims[str(f)] for f in representation.SPECTRUM_FRACTIONS]
    assert 1 <= counts[0] <= counts[1] <= counts[2] <= 16, dims
  # The per-class study scores the run's learned-quantiser codes: the mean of its queries'
  # APs is the report's tie-aware mAP of those codes; against itself, every difference is 0.
  study = subprocess.run([sys.executable, "-m", "cmah_jax.experiments.per_class",
                          f"--workdir={run['workdir']}", f"--against={run['workdir']}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert study.returncode == 0, study.stdout[-2000:] + study.stderr[-2000:]
  record = json.load(open(os.path.join(run["workdir"], "per_class.json")))
  for d in ("i2p", "p2i"):
    assert record[d]["map"] == pytest.approx(report["itq"]["map_tie_aware"][d]["16"],
                                             abs=1e-12)
    assert record["against"][d]["ap"] == record[d]["ap"]
    rows = np.array(record[d]["confusion"], dtype=float)
    assert np.allclose(rows[~np.isnan(rows).any(1)].sum(1), 1.0)
  assert len(record["classes"]) == len(record["i2p"]["confusion"])
  assert "learned quantiser's codes" in study.stdout and "+0.000 / +0.000" in study.stdout
  assert os.path.getsize(os.path.join(run["workdir"], "per_class.png")) > 0


def test_stopping_the_suite_checkpoints_its_runs_and_exits_without_a_traceback(tmp_path):
  """`kill PID` (or Ctrl-C) on the suite: its running jobs save a checkpoint and stop, and
  the suite exits 130 with a one-line message, not a Python traceback."""
  cmd = [sys.executable, "-m", "cmah_jax.experiments", "--suite=smoke",
         f"--config=configs/default.py:runlocal,steps=100000,data_dir={tmp_path / 'data'}",
         f"--workdir={tmp_path / 'suite'}", "--seeds=1", "--methods=cmah"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
    # Its own process group, so that a failure below kills the suite and its run as
    # well instead of leaving a 100,000-step run training behind the test session.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err,
                            start_new_session=True)
    try:
      deadline = time.time() + 600
      log = None
      while time.time() < deadline and proc.poll() is None:  # until the run is training
        logs = glob.glob(str(tmp_path / "suite" / "runs" / "*" / "*" / "log.txt"))
        if logs and re.search(r"step \d+/100000", open(logs[0]).read()):
          log = logs[0]
          break
        time.sleep(0.5)
      assert log is not None, (tmp_path / "out.txt").read_text()[-2000:]
      proc.send_signal(signal.SIGTERM)
      code = proc.wait(timeout=300)
    finally:
      try:  # whatever is left of the group (nothing, when it stopped as it should)
        os.killpg(proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
  assert code == 130, stdout[-2000:] + stderr[-2000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert "[experiments] interrupted: asking running jobs to checkpoint and stop" in stdout
  stopped = re.search(r"Stopped by signal at step (\d+); checkpoint saved", open(log).read())
  assert stopped, open(log).read()[-2000:]
  step = int(stopped.group(1))
  assert os.path.isdir(os.path.join(os.path.dirname(log), "checkpoints", str(step)))


def test_cosine_similarity_of_codes_is_the_scaled_inner_product():
  rng = np.random.default_rng(0)
  q = np.where(rng.random((30, 8)) < 0.5, -1.0, 1.0)
  d = np.where(rng.random((90, 8)) < 0.5, -1.0, 1.0)
  np.testing.assert_allclose(representation.cosine_similarity(q, d), q @ d.T / 8, atol=1e-12)
  a, b = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
  naive = [[x @ y / np.sqrt(x @ x) / np.sqrt(y @ y) for y in b] for x in a]
  np.testing.assert_allclose(representation.cosine_similarity(a, b), naive, atol=1e-12)


def test_spectrum_dims_on_a_hand_worked_matrix():
  # Columns 3a, 2b, c with a, b, c orthogonal, zero-mean and of equal norm (Hadamard rows),
  # and a constant column: squared singular values 9 : 4 : 1 : 0, so the top 1, 2, 3
  # directions hold 9/14 = 0.64, 13/14 = 0.93 and all of the variance.
  a, b, c = np.array([1, -1, 1, -1.]), np.array([1, 1, -1, -1.]), np.array([1, -1, -1, 1.])
  x = np.stack([3 * a, 2 * b, c, np.full(4, 5.0)], axis=1) + 7.0
  dims = representation.spectrum_dims(x, fractions=(0.5, 0.9, 0.99, 1.0))
  assert dims == {"0.5": 1, "0.9": 2, "0.99": 3, "1.0": 3}
  # A linear map of 2-D features into 6 dimensions has 2 directions, whatever the width.
  rng = np.random.default_rng(0)
  assert representation.spectrum_dims(rng.normal(size=(50, 2)) @ rng.normal(size=(2, 6)),
                                       fractions=(0.999999,)) == {"0.999999": 2}
  assert representation.spectrum_dims(np.ones((5, 3))) == {
      str(f): 0 for f in representation.SPECTRUM_FRACTIONS}
  # pre_tanh undoes the tanh: codes tanh(x W) of 3-D x span 3 directions before the tanh.
  h = np.tanh(0.3 * rng.normal(size=(40, 3)) @ rng.normal(size=(3, 8)))
  spectra = representation.code_spectra({"image/h": h, "point/h": h})
  assert spectra["image/pre_tanh"]["0.999"] <= 3 < spectra["image/h"]["0.999"]


def test_readme_block_is_generated_from_results():
  from cmah_jax.experiments import readme  # pylint: disable=import-outside-toplevel
  rows = [{"method": "cmah", "label": "CMAH", "group": "ours", "bits": b, "seed": s,
           "train_seconds": 1800.0, "map": {"i2p": 0.5, "p2i": 0.4},
           "map_tie_aware": {"i2p": 0.25 + 0.01 * s, "p2i": 0.125},
           "precision_within_radius": {"i2p": 0.1, "p2i": 0.1}}
          for b in (16, 64) for s in (0, 1)]
  data = {"suite": "main", "protocol": "P", "runs": rows,
          "aggregate": results_lib.aggregate(rows)}
  text = "intro\n<!-- results:begin -->\nold typed table\n<!-- results:end -->\noutro\n"
  out = readme.replace_block(text, readme.table(data, "python -m cmah_jax.experiments", seeds=2))
  assert out.startswith("intro\n<!-- results:begin -->\n") and out.endswith("outro\n")
  assert "old typed table" not in out
  assert "training time summed over runs 2.0 h" in out
  assert "Runs: `cmah`: 16 and 64 bits seeds 0-1." in out
  # Hand-worked: lengths sharing their seeds go together, a run's sign(h) row is not a run.
  listed = [{"method": "a", "bits": 32, "seeds": [0]}, {"method": "a", "bits": 16, "seeds": [0]},
            {"method": "a", "bits": 64, "seeds": [1, 2]},
            {"method": "cmah_sign", "bits": 16, "seeds": [0]},
            {"method": "b", "bits": 128, "seeds": [0, 2]}]
  assert readme.runs_listing(listed) == (
      "`a`: 16 and 32 bits seed 0, 64 bits seeds 1-2; `b`: 128 bits seeds 0, 2")
  assert "| CMAH | 0.255 ± 0.007 / 0.125 ± 0.000 | 0.255 ± 0.007 / 0.125 ± 0.000 |" in out
  # The planned runs not yet in the results, hand-worked on the `smoke` suite (cmah, random,
  # cca_itq, contrastive at 16 bits) at 2 seeds: cmah has both, random seed 0 only.
  smoke = {"suite": "smoke", "aggregate": [{"method": "cmah", "bits": 16, "seeds": [0, 1]},
                                           {"method": "random", "bits": 16, "seeds": [0]},
                                           {"method": "cmah", "bits": 64, "seeds": [3]}]}
  assert readme.missing_listing(smoke, 2) == (
      "`random`: 16 bits seed 1; `cca_itq`: 16 bits seeds 0-1; "
      "`contrastive`: 16 bits seeds 0-1", 5)
  assert readme.missing_listing(smoke, 1) == (
      "`cca_itq`: 16 bits seed 0; `contrastive`: 16 bits seed 0", 2)
  assert readme.missing_listing({**smoke, "suite": "not registered"}, 2) == ("", 0)
  # The runs of earlier defaults a suite keeps are never listed as not yet run: with
  # nothing run, `published` lacks exactly what `main` lacks.
  nothing = {"aggregate": []}
  assert readme.missing_listing({**nothing, "suite": "published"}, 3) == (
      readme.missing_listing({**nothing, "suite": "main"}, 3))
  assert readme.missing_listing({**nothing, "suite": "main"}, 3)[1] == (6 * 4 + 7 * 2 + 4) * 3
  # In the block: the `main` suite at 2 seeds lacks, say, contrastive at every length.
  assert "Not yet run (" in out and "`contrastive`: 16, 32, 64 and 128 bits seeds 0-1" in out
  assert "Not yet run" not in readme.table({**data, "suite": "not registered"})
  # The block's command is read back as written, and the text around the block is kept.
  head, block, tail = readme.split_block(out)
  assert (head, tail) == ("intro\n", "\noutro\n")
  assert readme.command_of(block) == "python -m cmah_jax.experiments"
  assert readme.command_of(readme.table(data)) == ""
  with pytest.raises(ValueError, match="markers"):
    readme.replace_block("no markers", "x")


def test_readme_command_names_the_bad_file(tmp_path):
  """A missing or runless results file, or a README without the block's markers, stop
  with a line naming the file, and leave the README as it was."""
  (tmp_path / "empty.json").write_text(json.dumps({"suite": "main", "runs": []}))
  with open(os.path.join(REPO, "docs", "results", "results.json")) as f:
    (tmp_path / "full.json").write_text(f.read())
  (tmp_path / "README.md").write_text("no markers here\n")
  for results, words in (("missing.json", "missing.json: cannot read it as JSON"),
                         ("empty.json", "empty.json holds no run"),
                         ("full.json", "README.md: the markers")):
    out = subprocess.run(
        [sys.executable, "-m", "cmah_jax.experiments.readme",
         f"--results={tmp_path / results}", f"--readme={tmp_path / 'README.md'}"],
        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert words in out.stderr, out.stderr
  assert (tmp_path / "README.md").read_text() == "no markers here\n"


def test_term_gradients_add_up_to_the_training_gradient():
  """Per-term gradients (`experiments.gradients`) recombined with the loss weights are the
  gradient the train step takes; the contrastive term never reaches the decoders."""
  model = CMAH(resolve_config("tiny", 16, {}))
  params = jax.jit(functools.partial(init_variables, model))(jax.random.key(0))["params"]
  k1, k2 = jax.random.split(jax.random.key(1))
  batch = {"images": jax.random.normal(k1, (4, model.config.image_size,
                                            model.config.image_size, 3)),
           "points": jax.random.normal(k2, (4, model.config.num_points, 3)),
           "label": jnp.arange(4), "index": jnp.arange(4)}
  spec = losses.LossSpec(lambda_r=0.5, point_recon_weight=3.0, image_recon_weight=0.25)
  objective = get_objective(spec, 16)
  key = jax.random.key(2)
  term_gradients = gradients.make_term_gradients(model, objective)
  grads = term_gradients(params, batch, key, key, jnp.int32(0), None)
  assert set(grads) == {"loss/contrastive", "loss/point_recon", "loss/image_recon"}

  def total(p):
    out = model.apply({"params": p}, images=batch["images"], points=batch["points"],
                      train=True, mask_key=key, rngs={"dropout": key})
    return objective(out, batch, None, jnp.int32(0))[0]

  want = jax.jit(jax.grad(total))(params)
  got = jax.tree.map(lambda c, p, i: c + 0.5 * (3.0 * p + 0.25 * i), grads["loss/contrastive"],
                     grads["loss/point_recon"], grads["loss/image_recon"])
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=1e-6)
  norms = gradients.group_norms(grads["loss/contrastive"])
  leaves = jax.tree_util.tree_flatten_with_path(grads["loss/contrastive"])[0]
  enc = np.concatenate([np.ravel(v) for p, v in leaves if p[0].key == "point_encoder"])
  assert norms["point_encoder"] == pytest.approx(np.linalg.norm(enc), rel=1e-5)
  assert norms["point_decoder"] == 0.0 and norms["image_decoder"] == 0.0
  assert gradients.group_norms(grads["loss/point_recon"])["point_decoder"] > 0


def test_dry_run_shows_progress_and_the_training_left(tmp_path):
  runs = plan_lib.plan(get_suite("smoke"), default.get_config("steps=100"), str(tmp_path),
                       seeds=[0, 1], bits=[16], methods=["cmah", "random"])
  by = {(r.method.name, r.seed): r for r in runs}
  done, partial = by["cmah", 0], by["cmah", 1]
  os.makedirs(done.workdir)
  with open(done.report_path, "w") as f:
    json.dump({"run_fingerprint": done.fingerprint, "steps": 100, "train_seconds": 50.0}, f)
  os.makedirs(partial.workdir)
  with open(os.path.join(partial.workdir, "metrics.jsonl"), "w") as f:
    f.write('{"step": 25, "loss/total": 3.0}\n{"step": 50, "loss/total": 2.0}\n{"step": 7')
  assert partial.steps_logged() == 50 and by["random", 0].steps_logged() == 0
  assert (done.total_steps, by["random", 0].total_steps) == (100, 0)
  lines = plan_lib.describe(runs)
  text = {line.split("  ")[0].strip(): line for line in lines[:-1]}
  # Its report predates the learned quantiser: the suite will add it before training.
  assert " finished, no ITQ " in text["cmah 16 bits seed 0"]
  assert done.needs_quantizer() and not partial.needs_quantizer()
  with open(done.report_path, "w") as f:
    json.dump({"run_fingerprint": done.fingerprint, "steps": 100, "train_seconds": 50.0,
               "itq": {}}, f)
  assert not done.needs_quantizer()
  assert " finished " in plan_lib.describe(runs)[0]
  assert " at 50/100 " in text["cmah 16 bits seed 1"]
  assert " to run " in text["random 16 bits seed 0"]
  # 50 steps left at the finished run's 0.5 s/step: 25 s.
  assert lines[-1].startswith("1 finished, 3 to run: 50 training steps left, about 0m25s")
  assert plan_lib.format_duration(3700) == "1h01m"
  # A config sized in epochs (the real datasets') has no step count until its data is read.
  sized = default.get_config()
  sized.total_steps, sized.epochs = None, 3.0
  by_epochs = plan_lib.plan(get_suite("smoke"), sized, str(tmp_path), seeds=[0], bits=[16],
                            methods=["cmah"])
  assert plan_lib.describe(by_epochs)[-1] == (
      "0 finished, 1 to run: 0 training steps left (not counting 1 run(s) sized in epochs, "
      "3 each: their steps are fixed from the prepared train split when they start)")


@pytest.mark.parametrize("results_file", ["results.json", "tuning_validation.json"])
def test_every_published_run_keeps_its_fingerprint(results_file):
  """Each run in docs/results was trained and recorded under a fingerprint; planning it
  again with today's code must give the same one, or the suite would retrain it (a new
  config field missing from config.ADDED_LATER, say)."""
  with open(os.path.join(REPO, "docs", "results", results_file)) as f:
    recorded = json.load(f)
  base = default.get_config("steps=4800,data_dir=work/data")
  suite = get_suite(recorded["suite"])
  assert recorded["runs"]
  for run in recorded["runs"]:
    if run.get("codes") == "sign":  # a second row of a run (results.SIGN_ROWS)
      continue
    # The method that plans it now: its own, or the one that took over its name when a
    # default moved (`Method.recorded_as`; e.g. "cmah" rows of the 1:1 L_2D weight, which
    # tables written since show as "cmah_img1"), or the one recorded under the name its
    # run directory has (e.g. rows of the CMAH of rounds 18-24, "cmah" in tables written
    # then and `linear_patches` since, recorded as "masked_point_full_image").
    recorded_name = os.path.basename(os.path.dirname(run["workdir"]))
    names = [n for n in suite.methods
             if {run["method"], recorded_name} & {n, get_method(n).run_name}]
    planned = [r for r in plan_lib.plan(suite, base, "/unused", seeds=[run["seed"]],
                                        bits=[run["bits"]], methods=names)
               if r.fingerprint[:16] == run["fingerprint"]]
    assert len(planned) == 1, (run["method"], run["bits"], run["seed"], names)


def _as_then(monkeypatch, name, overrides=()):
  """Make `name` plan as the method of that name was defined before a default moved: no
  pins, `overrides`, recorded under its own name."""
  monkeypatch.setitem(methods_lib.METHODS, name,
                      Method(name, name, "ours", "[test]", "train", tuple(overrides)))


def _defaults(temperature, isotropic, image_weight):
  """The 4,800-step default config with these three (earlier) defaults, and L_c's pairs
  as they were until round 18 (the paper's)."""
  c = default.get_config("steps=4800")
  c.loss.temperature, c.input.point_scale_isotropic = temperature, isotropic
  c.loss.image_recon_weight = image_weight
  c.loss.pairs = PAPER_PAIRS["loss.pairs"]
  c.model.overrides.image_stem_dims = ()  # MAE's linear patch embedding, until round 25
  return c


def test_the_runs_of_earlier_defaults_are_their_pinned_methods_today(monkeypatch):
  """Round 10 moved the L_2D weight from 1 to 0.1 (temperature 0.2, isotropic scaling);
  round 16b moved the point scaling to per-axis; round 18 moved L_c's masked pair to the
  masked point view against the full image; round 25 the image tokens to the hMLP stem.
  CMAH planned under each earlier default is the run its pinned method plans today
  (`cmah_img1`, `cmah_r10`, `paper_masked_pair_r18`: same fingerprint, directory and
  config), not today's CMAH; the ablation `cmah_aniso` of round 16b is today's
  `paper_masked_pair_r18`, and the candidate `masked_point_full_image` of round 18 today's
  `linear_patches`; and under the old defaults `cmah` and `cmah_img1` would be one run,
  which a plan refuses."""
  suite = get_suite("published")
  now = {r.method.name: r for r in plan_lib.plan(
      suite, default.get_config("steps=4800"), "/r", seeds=[1], bits=[64],
      methods=["cmah", "cmah_img1", "cmah_r10", "contrastive_r10", "paper_masked_pair",
               "linear_patches", "paper_masked_pair_r18"])}
  with monkeypatch.context() as m:
    _as_then(m, "cmah")
    _as_then(m, "contrastive", (("loss.pairs", "full_full"), ("loss.lambda_r", 0.0)))
    _as_then(m, "cmah_aniso", (("input.point_scale_isotropic", False),))
    _as_then(m, "masked_point_full_image",
             (("loss.pairs", "full_full,masked_point_full_image"),))
    then = suites_lib.Suite("main", "then",
                            ((("cmah", "contrastive", "cmah_aniso"), (64,)),))
    (before_r10,) = plan_lib.plan(then, _defaults(0.2, True, 1.0), "/r", seeds=[1],
                                  bits=[64], methods=["cmah"])
    r10 = {r.method.name: r for r in plan_lib.plan(then, _defaults(0.2, True, 0.1), "/r",
                                                   seeds=[1])}
    (candidate,) = plan_lib.plan(
        suites_lib.Suite("tuning", "then", ((("masked_point_full_image",), (64,)),)),
        _defaults(0.2, False, 0.1), "/r", seeds=[1])
  for today, then in ((now["cmah_img1"], before_r10), (now["cmah_r10"], r10["cmah"]),
                      (now["contrastive_r10"], r10["contrastive"]),
                      (now["paper_masked_pair_r18"], r10["cmah_aniso"]),
                      (now["linear_patches"], candidate)):
    assert (today.fingerprint, today.workdir) == (then.fingerprint, then.workdir)
    assert today.config.to_dict() == then.config.to_dict()
  assert now["paper_masked_pair_r18"].workdir.split("/runs/")[1].startswith("cmah_aniso/")
  assert now["linear_patches"].workdir.split("/runs/")[1].startswith(
      "masked_point_full_image/")
  # Round 25 moved the image tokens to the hMLP stem: today's CMAH and the ablation of
  # the paper's masked pair are new runs (the stem in their configs), not those above.
  assert (now["cmah"].config.model.image_stem_dims,
          now["paper_masked_pair"].config.model.image_stem_dims,
          now["linear_patches"].config.model.image_stem_dims) == ((32,), (32,), ())
  assert now["paper_masked_pair"].fingerprint != now["paper_masked_pair_r18"].fingerprint
  assert (now["cmah"].config.input.point_scale_isotropic,
          now["cmah_r10"].config.input.point_scale_isotropic) == (False, True)
  assert (now["cmah"].config.loss.pairs, now["paper_masked_pair"].config.loss.pairs) == (
      ("full_full", "masked_point_full_image"), ("full_full", "masked_masked"))
  with monkeypatch.context() as m:
    _as_then(m, "cmah")
    both = suites_lib.Suite("main", "then", ((("cmah", "cmah_img1"), (16,)),))
    with pytest.raises(ValueError, match="methods cmah and cmah_img1 are one run"):
      plan_lib.plan(both, _defaults(0.2, True, 1.0), "/r", seeds=[1])
  # Their rows recorded as CMAH's (learned quantiser and sign(h)) show as cmah_img1's.
  recorded = [{"method": "cmah", "codes": "itq"}, {"method": "cmah_sign", "codes": "sign"}]
  assert [r["method"] for r in results_lib.relabel(now["cmah_img1"], recorded)] == [
      "cmah_img1", "cmah_img1_sign"]


def test_pinning_a_later_field_at_its_neutral_value_keeps_the_fingerprint():
  """A method that pins a field added later (config.ADDED_LATER) at the value its runs had
  before the field existed is the same run; pinned elsewhere, or the default moved, it is
  not."""

  def fp(pinned, default_weight=1.0):
    c = default.get_config()
    c.loss.image_recon_weight = default_weight
    overrides = (("loss.temperature", 0.2),) + pinned
    method = Method("m", "m", "candidate", "[test]", "train", overrides)
    config_lib.apply_overrides(c, method.overrides)
    return plan_lib.run_fingerprint(method, config_lib.resolve(c))

  assert fp((("loss.image_recon_weight", 1.0),)) == fp(())
  assert fp((("loss.image_recon_weight", 1.0),), default_weight=0.1) == fp(())
  assert fp((("loss.image_recon_weight", 0.1),)) != fp(())
  assert fp((), default_weight=0.1) != fp(())
  # A method that does not train reads no loss weight: a moved default leaves it alone.
  classic = []
  for weight in (1.0, 0.1):
    c = default.get_config()
    c.loss.image_recon_weight = weight
    method = Method("c", "c", "baseline", "[test]", "classic")
    classic.append(plan_lib.run_fingerprint(method, config_lib.resolve(c)))
  assert classic[0] == classic[1]
  # Nor does it build a model: a model field added later is not fingerprinted either.
  c = default.get_config()
  c.model.overrides.masked_views = 3
  assert plan_lib.run_fingerprint(method, config_lib.resolve(c)) == classic[0]
  # A field of tuples (lists in JSON, `model.image_stem_dims`) pinned by an override at
  # its neutral value, MAE's linear patch embedding: the run made before the field existed,
  # whatever the variant's default; pinned elsewhere, the override is listed.
  def stem_fp(overrides, variant_stem):
    c = default.get_config()
    c.model.overrides.image_stem_dims = variant_stem
    method = Method("m", "m", "candidate", "[test]", "train", overrides)
    config_lib.apply_overrides(c, method.overrides)
    return plan_lib.run_fingerprint(method, config_lib.resolve(c))
  linear, stem = (("model.overrides.image_stem_dims", ()),), (
      ("model.overrides.image_stem_dims", (32,)),)
  assert stem_fp(linear, (32,)) == stem_fp(linear, ()) == stem_fp((), ())
  assert stem_fp(stem, ()) != stem_fp((), (32,))


def test_pinning_a_later_model_field_through_its_override_slot():
  """`model.overrides.masked_views` pinned at 1 (the neutral value of `model.masked_views`
  in config.ADDED_LATER) is the same run as not pinning it, whatever the base config's
  number of views; pinned at 2 it is another run."""

  def fp(pinned, base_views=None):
    c = default.get_config()
    c.loss.pairs = PAPER_PAIRS["loss.pairs"]  # the masked-masked pair the views multiply
    if base_views is not None:
      c.model.overrides.masked_views = base_views
    method = Method("m", "m", "ablation", "[test]", "train",
                    (("loss.temperature", 0.2),) + pinned)
    config_lib.apply_overrides(c, method.overrides)
    return plan_lib.run_fingerprint(method, config_lib.resolve(c))

  one_view = (("model.overrides.masked_views", 1),)
  assert fp(one_view, 1) == fp((), 1) == fp(one_view, base_views=2)
  assert fp((), base_views=2) != fp((), 1)
  assert fp((("model.overrides.masked_views", 2),), 1) != fp((), 1)
