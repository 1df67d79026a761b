"""Config files parse and resolve; the resolved config is validated and fingerprinted."""
import dataclasses
import glob
import importlib
import os
import subprocess
import sys

import jax
import pytest

from cmah_jax import config as config_lib
from cmah_jax.models import CMAH, abstract_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{REPO}/configs/*.py")
                      if not p.endswith(("__init__.py", "paper_scale.py")))


def test_config_files_are_found():
  assert {"default", "modelnet40", "shapenet55", "shapenet_render"} <= set(CONFIG_FILES)


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("arg", [None, "runlocal", "bits=16,steps=10,batch=32"])
def test_every_config_file_resolves_and_builds(name, arg):
  module = importlib.import_module(f"configs.{name}")
  cfg = config_lib.resolve(module.get_config(arg))
  # Input sizes are resolved to the model's, never left None.
  assert cfg.input.num_points == cfg.model.num_points > 0
  assert cfg.input.image_size == cfg.model.image_size > 0
  if arg and "bits=16" in arg:
    assert (cfg.model.bits, cfg.total_steps, cfg.input.batch_size) == (16, 10, 32)
  # A smoke run prepares the dataset's smallest config, not the paper-scale one.
  assert (cfg.dataset.config == "tiny") == (arg == "runlocal"), cfg.dataset
  shapes = jax.eval_shape(lambda: abstract_variables(CMAH(cfg.model)))
  assert shapes["params"]["point_hash"]["proj"]["kernel"].shape[-1] == cfg.model.bits


def test_default_config_values():
  """The embedded-dataset default, as documented in configs/default.py and the README."""
  cfg = config_lib.resolve(importlib.import_module("configs.default").get_config())
  assert (cfg.variant, cfg.model.bits, cfg.input.num_points, cfg.input.image_size) == (
      "small", 64, 512, 64)
  assert (cfg.input.batch_size, cfg.input.eval_batch_size, cfg.total_steps) == (64, 128, 2400)
  # L_c's masked pair: the masked point view against the full image (round 18; the
  # paper's masked-masked pair is the `paper` switch's).
  assert cfg.loss.pairs == ("full_full", "masked_point_full_image")
  assert cfg.dataset.config == "default"
  # Our validated departures from the paper (temperature, L_2D weight, the masked pair;
  # the point scaling is Point-MAE's per-axis since round 16b), and the `paper` switch
  # that undoes them.
  assert (cfg.loss.temperature, cfg.input.point_scale_isotropic,
          cfg.loss.image_recon_weight) == (0.2, False, 0.1)
  for name in ("default", "modelnet40"):
    paper = config_lib.resolve(importlib.import_module(f"configs.{name}").get_config("paper"))
    assert (paper.loss.temperature, paper.input.point_scale_isotropic,
            paper.loss.image_recon_weight) == (0.07, False, 1.0)
    assert paper.loss.pairs == ("full_full", "masked_masked")
    ours = config_lib.resolve(importlib.import_module(f"configs.{name}").get_config())
    assert {k for k in ours.to_dict()["loss"] if ours.to_dict()["loss"][k]
            != paper.to_dict()["loss"][k]} == {"temperature", "image_recon_weight", "pairs"}
    assert ours.to_dict()["input"] == paper.to_dict()["input"]
    # The image tokens: the hMLP stem for the `small` variant since round 25, MAE's linear
    # embedding for the paper-scale `base` and under the `paper` switch.
    assert (ours.model.image_stem_dims, paper.model.image_stem_dims) == (
        (32,) if name == "default" else (), ())
    assert {k for k in ours.to_dict()["model"] if ours.to_dict()["model"][k]
            != paper.to_dict()["model"][k]} == ({"image_stem_dims"} if name == "default"
                                                 else set())


def test_paper_scale_schedule_in_epochs():
  """Sized from the prepared train split (here 9,840 examples): see test_robustness too."""
  cfg = config_lib.resolve(importlib.import_module("configs.modelnet40").get_config())
  assert (cfg.variant, cfg.input.batch_size, cfg.total_steps, cfg.epochs) == (
      "base", 128, None, 300)
  sized = config_lib.resolve_schedule(cfg, 9840)
  spe = 9840 // 128
  assert (sized.total_steps, sized.optim.warmup_steps) == (300 * spe, 10 * spe)
  assert (cfg.input.num_points, cfg.input.image_size) == (1024, 224)


def test_resolve_rejects_unknown_and_inconsistent_keys():
  c = importlib.import_module("configs.default").get_config()
  c.unlock()
  c.input.batchsize = 3
  with pytest.raises(ValueError, match=r"batchsize.*config\.input"):
    config_lib.resolve(c)
  c = importlib.import_module("configs.default").get_config()
  c.input.num_points = 300
  c.model.overrides = {"num_points": 400}
  with pytest.raises(ValueError, match="disagrees"):
    config_lib.resolve(c)
  c = importlib.import_module("configs.default").get_config()
  c.loss.pairs = "full_full,nope"
  with pytest.raises(ValueError, match="nope"):
    config_lib.resolve(c)
  c = importlib.import_module("configs.default").get_config()
  c.log_every_steps = 0
  with pytest.raises(ValueError, match="log_every_steps"):
    config_lib.resolve(c)



@pytest.mark.parametrize("section,key,value,words", [
    ("optim", "base_learning_rate", -1e-3, "must be > 0"),     # gradient ascent
    ("optim", "grad_clip_norm", 0.0, "must be > 0"),           # every update zero
    ("optim", "learning_rate_base_batch", 0, "must be > 0"),   # lr / 0
    ("optim", "warmup_steps", -5, "an int >= 0 or None"),
    ("optim", "b2", 1.0, r"in \[0, 1\)"),
    ("optim", "weight_decay", -0.1, ">= 0"),
    ("optim", "min_learning_rate_ratio", 2.0, r"in \[0, 1\]"),
    ("eval", "hamming_radius", -3, ">= 0"),
    ("eval", "precision_ks", (10, 0), "cut-offs >= 1"),
    ("eval", "num_examples_in_figure", 0, ">= 1"),   # else the report's figure fails last
])
def test_resolve_names_a_bad_optimiser_or_evaluation_value(section, key, value, words):
  c = importlib.import_module("configs.default").get_config()
  c[section][key] = value
  with pytest.raises(ValueError, match=rf"config\.{section}\.{key}=.*{words}"):
    config_lib.resolve(c)
  # The same config round-trips through its dict form (a checkpoint's) only when valid.
  good = config_lib.resolve(importlib.import_module("configs.default").get_config())
  bad = good.to_dict()
  bad[section][key] = list(value) if isinstance(value, tuple) else value
  with pytest.raises(ValueError, match=rf"config\.{section}\.{key}="):
    config_lib.ExperimentConfig.from_dict(bad)


def test_input_sizes_follow_explicit_input_values():
  c = importlib.import_module("configs.default").get_config("runlocal")
  c.input.num_points = 128
  cfg = config_lib.resolve(c)
  assert cfg.model.num_points == cfg.input.num_points == 128


def test_fingerprint_changes_with_any_field_and_not_otherwise():
  get = importlib.import_module("configs.default").get_config
  a = config_lib.resolve(get())
  assert a.fingerprint() == config_lib.resolve(get()).fingerprint()
  for changed in (dataclasses.replace(a, total_steps=2401),
                  dataclasses.replace(a, loss=dataclasses.replace(a.loss, temperature=0.1)),
                  dataclasses.replace(a, model=dataclasses.replace(a.model, depth=5))):
    assert changed.fingerprint() != a.fingerprint()
  # Resolving twice is the identity; the dict form round-trips through JSON types.
  assert config_lib.resolve(a) is a
  assert a.to_dict()["input"]["point_scale"] == [2 / 3, 3 / 2]


def test_a_weight_of_a_term_that_is_off_does_not_change_the_fingerprint():
  """Contrastive-only (lambda_r = 0) and the no-L_2D / no-L_3D ablations never read the
  reconstruction weights, so a changed default weight keeps their runs; CMAH's changes."""
  get = importlib.import_module("configs.default").get_config

  def fp(image_recon_weight, point_recon_weight=1.0, **loss):
    c = get()
    c.loss.image_recon_weight, c.loss.point_recon_weight = (image_recon_weight,
                                                            point_recon_weight)
    c.loss.update(loss)
    return config_lib.resolve(c).fingerprint()

  assert fp(0.1) != fp(1.0) and fp(1.0, point_recon_weight=3.0) != fp(1.0)
  assert fp(0.1, lambda_r=0.0) == fp(1.0, lambda_r=0.0)
  assert fp(0.1, point_recon_weight=3.0, lambda_r=0.0) == fp(1.0, lambda_r=0.0)
  assert fp(0.1, use_image_recon=False) == fp(1.0, use_image_recon=False)
  assert fp(0.1, use_point_recon=False) != fp(1.0, use_point_recon=False)  # L_2D still on
  assert fp(1.0, point_recon_weight=3.0, use_point_recon=False) == fp(
      1.0, use_point_recon=False)
  assert fp(1.0, lambda_r=0.0) != fp(1.0)
  # UCCH's temperature is read by UCCH's objective only; at UCCH's 0.9 it leaves the
  # fingerprints of runs made before the field existed alone.
  assert fp(1.0, ucch_temperature=0.2) == fp(1.0)
  ucch = dict(objective="ucch", pairs="full_full", lambda_r=0.0)
  assert fp(1.0, ucch_temperature=0.2, **ucch) != fp(1.0, **ucch)
  c = get()
  c.loss.update(ucch)
  assert "ucch_temperature" not in config_lib.resolve(c).fingerprint_dict()["loss"]


def test_an_inert_weight_leaves_the_loss_bit_identical():
  """What `INERT_WHEN` claims, checked on the loss itself: with lambda_r = 0 (or L_2D off)
  the total is the same number whatever the weight."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from cmah_jax import losses  # pylint: disable=import-outside-toplevel
  from cmah_jax.losses.spec import LossSpec  # pylint: disable=import-outside-toplevel
  keys = jax.random.split(jax.random.key(0), 8)
  b, k = 4, 16
  outputs = {f"{m}/{kind}": jax.random.normal(key, (b, k))
             for (m, kind), key in zip([("point", "h"), ("image", "h"),
                                        ("point", "h_masked"), ("image", "h_masked")], keys)}
  outputs.update({"point/pred": jax.random.normal(keys[4], (b, 3, 8, 3)),
                  "point/target": jax.random.normal(keys[5], (b, 3, 8, 3)),
                  "image/pred": jax.random.normal(keys[6], (b, 5, 12)),
                  "image/target": jax.random.normal(keys[7], (b, 5, 12))})
  for off in (dict(lambda_r=0.0), dict(use_image_recon=False)):
    totals = []
    for w in (0.1, 1.0, 7.0):
      spec = LossSpec(image_recon_weight=w, **off)
      total, _ = losses.cmah_loss(outputs, spec)
      totals.append(np.asarray(total))
    assert totals[0] == totals[1] == totals[2], off


def test_extra_masked_views_resolve_away_where_no_pair_reads_them():
  """Masked views 1 .. V-1 are read by the masked-masked pair (both towers') and by the
  masked points against the full image (the point tower's): without either pair a config
  asking for V > 1 resolves to the one-view run (same config, same fingerprint); with the
  masked-masked pair V stays with the image's views; with only the point pair V stays
  without them (`extra_image_views=False`); each V is its own fingerprint."""
  def cfg(views, pairs, image_views=None):
    c = importlib.import_module("configs.default").get_config()
    c.loss.pairs = pairs
    if views is not None:
      c.model.overrides.masked_views = views
    if image_views is not None:
      c.model.overrides.extra_image_views = image_views
    return config_lib.resolve(c)

  for pairs in ("full_full", "full_full,intra_modal"):
    runs = [cfg(views, pairs, image) for views in (None, 1, 2, 3) for image in (None, False)]
    assert [r.model.masked_views for r in runs] == [1] * 8, pairs
    assert all(r.model.extra_image_views for r in runs), pairs
    assert all(r == runs[0] and r.fingerprint() == runs[0].fingerprint() for r in runs)
  for pairs, image_views in (("full_full,masked_masked", True), ("masked_masked", True),
                             ("full_full,masked_point_full_image", False)):
    runs = [cfg(v, pairs) for v in (1, 2, 3)]
    assert [r.model.masked_views for r in runs] == [1, 2, 3], pairs
    assert [r.model.extra_image_views for r in runs] == [True, image_views, image_views]
    assert len({r.fingerprint() for r in runs}) == 3, pairs
  # One view: the flag is meaningless and resolves to its neutral value (old fingerprints).
  point_pair = "full_full,masked_point_full_image"
  assert cfg(1, point_pair, False) == cfg(None, point_pair)
  with pytest.raises(ValueError, match="extra_image_views=False with masked_views=2: the "
                     "masked-masked pair"):
    cfg(2, "full_full,masked_masked", False)


def test_model_overrides_are_settable_on_the_command_line():
  """Every ModelConfig field but `bits` has an unset slot under `config.model.overrides`,
  so `--config.model.overrides.FIELD=V` parses against the locked config; unset slots
  leave the variant's values (and every fingerprint) alone; a misspelt key exits with
  one line naming the flag, not ml_collections' traceback (as do a missing config file
  and a config argument the file refuses)."""
  from cmah_jax.models.variants import field_names  # pylint: disable=import-outside-toplevel
  c = importlib.import_module("configs.default").get_config()
  assert sorted(c.model.overrides) == sorted(set(field_names()) - {"bits"})
  assert all(v is None for v in c.model.overrides.values())
  plain = importlib.import_module("configs.default").get_config()
  with plain.unlocked():
    plain.model.overrides = {}
  assert config_lib.resolve(c) == config_lib.resolve(plain)
  assert config_lib.resolve(c).fingerprint() == config_lib.resolve(plain).fingerprint()
  c.lock()
  c.loss.pairs = "full_full,masked_masked"  # the pair the masked views multiply
  c.model.overrides.masked_views = 2
  c.model.overrides.point_mask_ratio = 0.4
  cfg = config_lib.resolve(c)
  assert (cfg.model.masked_views, cfg.model.point_mask_ratio) == (2, 0.4)

  cmd = [sys.executable, "main.py", "--config=configs/default.py:runlocal",
         "--workdir=/nonexistent/never-written"]
  # Among several overrides, the one with the missing key is named.
  bad = subprocess.run(cmd + ["--config.loss.temperature=0.3",
                              "--config.model.overrides.depthh=2"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
  assert bad.stderr.strip().splitlines()[-1].startswith(
      "main.py: bad config override --config.model.overrides.depthh: no such key. "
      "Did you mean \"depth\""), bad.stderr
  # A config file that is missing, or whose argument it refuses: one line each, too.
  for config, want in (("configs/nope.py", "main.py: --config: Configuration is not "
                        "available"), ("configs/default.py:bogus=1", "main.py: flag --config="
                        "configs/default.py:bogus=1: ValueError: Unknown config argument")):
    bad = subprocess.run([sys.executable, "main.py", f"--config={config}",
                          "--workdir=/nonexistent/never-written"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr
    assert want in bad.stderr, bad.stderr


def test_config_arguments_are_read_as_their_types():
  """`configs/X.py:key=value`: a bool takes true/false (false used to be the text "false",
  which is truthy: `paper=false` applied the paper's objective), an int an integer
  (`steps=1.5` used to run 1 step), a float any number; a bad value names its argument."""
  from cmah_jax.config_args import parse_config_arg  # pylint: disable=import-outside-toplevel
  defaults = dict(flag=False, n=3, x=2.0, name="a", steps=None, path=None)
  types = dict(steps=int, path=str)
  read = lambda arg: parse_config_arg(arg, defaults, types)
  assert read("flag=false,n=7") == dict(defaults, n=7)
  for text, want in (("flag", True), ("flag=True", True), ("flag=yes", True),
                     ("flag=0", False), ("flag=Off", False)):
    assert read(text)["flag"] is want, text
  assert read("x=3")["x"] == 3.0 and isinstance(read("x=3")["x"], float)
  assert read("name=7,path=123")["name"] == "7" and read("path=123")["path"] == "123"
  assert read("steps=40")["steps"] == 40 and read("steps=none,path=None") == defaults
  for arg, words in (("flag=maybe", "flag takes true or false"),
                     ("steps=1.5", "steps takes an integer"), ("n=True", "n takes an integer"),
                     ("x=abc", "x takes a number"), ("n", "'n' in 'n' needs a value"),
                     ("bogus=1", "Unknown config argument 'bogus'")):
    with pytest.raises(ValueError, match=words):
      read(arg)
  # The shipped config files: `paper=false` is today's objective, `runlocal=false` the
  # full run.
  default = importlib.import_module("configs.default")
  assert default.get_config("paper=false").loss.temperature == 0.2
  assert default.get_config("runlocal=false").total_steps == 2400
  with pytest.raises(ValueError, match="steps takes an integer"):
    default.get_config("steps=1.5")
