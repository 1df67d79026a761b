"""The documentation points at things that exist: relative links resolve, and every config
switch the README and docs/tuning.md name (`loss.temperature`, ...) is a key of the default
config, so a renamed switch cannot leave the docs behind."""
import dataclasses
import importlib.util
import json
import os
import re

import pytest

from cmah_jax.models.variants import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "BENCHMARKS.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md"))
SECTIONS = ("loss", "input", "model", "optim", "eval", "dataset")


def _text(rel: str) -> str:
  with open(os.path.join(REPO, rel), encoding="utf-8") as f:
    return f.read()


def _heading_slugs(markdown: str) -> set[str]:
  """GitHub's anchors of a file's headings: lower case, punctuation dropped, spaces -> '-'."""
  slugs = set()
  for line in markdown.splitlines():
    m = re.match(r"#{1,6} (.+)", line)
    if m:
      slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
      slugs.add(slug)
  return slugs


def _relative_links(markdown: str) -> list[str]:
  """Targets of `[text](target)` links that are neither URLs nor pure in-page anchors."""
  targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
  return [t for t in targets if not re.match(r"[a-z]+://|mailto:|#", t)]


def test_slugs_follow_githubs_rule():
  assert _heading_slugs("## Tuning, in short\n### GPU / TPU\n# a_b (c)") == {
      "tuning-in-short", "gpu--tpu", "a_b-c"}


@pytest.mark.parametrize("rel", DOCS)
def test_relative_links_resolve(rel):
  base = os.path.dirname(os.path.join(REPO, rel))
  for target in _relative_links(_text(rel)):
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(base, path))
    assert os.path.exists(full), f"{rel}: link to {target!r}: {full} does not exist"
    if anchor and path.endswith(".md"):
      with open(full, encoding="utf-8") as f:
        assert anchor in _heading_slugs(f.read()), (
            f"{rel}: link to {target!r}: no heading in {path} has the anchor #{anchor}")


def _default_config():
  spec = importlib.util.spec_from_file_location("default_config",
                                                os.path.join(REPO, "configs", "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("rel", ["README.md", os.path.join("docs", "tuning.md")])
def test_named_config_switches_exist(rel):
  config = _default_config()
  # `model.X` names a field of the model variant, set through `model.overrides`.
  keys = {section: set(config[section].keys()) for section in SECTIONS}
  keys["model"] |= {f.name for f in dataclasses.fields(ModelConfig)}
  named = set(re.findall(r"`((?:%s)\.[a-z_]+)[=`]" % "|".join(SECTIONS), _text(rel)))
  assert named, f"{rel} names no config switch: the pattern no longer matches the docs"
  missing = sorted(k for k in named if k.split(".")[1] not in keys[k.split(".")[0]])
  assert not missing, f"{rel} names config keys the default config lacks: {missing}"


def test_readme_results_block_is_generated_from_the_committed_results():
  """The table between the README's results markers is exactly what
  `python -m cmah_jax.experiments.readme` makes of docs/results/results.json (with the
  command line the block names), so no figure in it was typed or left behind by a merge."""
  from cmah_jax.experiments import readme  # pylint: disable=import-outside-toplevel
  block = readme.split_block(_text("README.md"))[1]
  command = readme.command_of(block)
  assert command.startswith("python -m cmah_jax.experiments"), "the block names no command"
  with open(os.path.join(REPO, "docs", "results", "results.json"), encoding="utf-8") as f:
    data = json.load(f)
  assert block == readme.table(data, command), (
      "README.md's results block differs from docs/results/results.json: regenerate it with "
      "python -m cmah_jax.experiments.readme --results=docs/results/results.json "
      "--readme=README.md")


def _pins(name):
  """{normalised package name: version} of the `pkg[extra]==version` lines of a file."""
  pins = {}
  with open(os.path.join(REPO, name)) as f:
    for line in f:
      m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line.strip())
      if m:
        pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(3)
  return pins


def test_every_requirement_is_pinned_and_its_pin_is_the_constraint():
  """requirements.txt pins each package it lists; constraints.txt (the venv's freeze) pins
  those at the same versions, so setup.sh's `-r requirements.txt -c constraints.txt` can
  be satisfied, and pins the dependencies they pull in (jaxlib's ml_dtypes, orbax's
  tensorstore, tfds's protobuf)."""
  with open(os.path.join(REPO, "requirements.txt")) as f:
    listed = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
  required, constrained = _pins("requirements.txt"), _pins("constraints.txt")
  assert len(required) == len(listed), "a requirement without ==version"
  assert {k: constrained.get(k) for k in required} == required
  assert {"ml-dtypes", "tensorstore", "protobuf"} <= set(constrained)
  with open(os.path.join(REPO, "launch", "setup.sh")) as f:
    assert "-r requirements.txt -c constraints.txt" in f.read()
