"""End-to-end training: report, exact resume, topology changes, multi-device equivalence."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from cmah_jax import checkpointing, evaluate, run, train
from cmah_jax import quantizer as quantizer_lib
from cmah_jax.inference import load_trained
from cmah_jax.metrics import mean_average_precision, tie_aware_mean_average_precision
from cmah_jax.metric_writer import read_jsonl, training_seconds
from configs import default
from tiny_runs import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def params_of(result):
  return jax.tree.map(np.asarray, jax.device_get(result.state["params"]))


def losses_of(workdir):
  return [r["loss/total"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss/total" in r]


def assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, **tol)


def signal_after_checkpoint(save, at_step):
  """Wrap `checkpointing.save` so SIGTERM arrives right after the `at_step` save starts."""

  def save_then_signal(manager, step, state, force=False):
    started = save(manager, step, state, force=force)
    if step == at_step:
      os.kill(os.getpid(), signal.SIGTERM)
    return started

  return save_then_signal


def test_end_to_end_report(data_dir, tmp_path):
  result = run.run_experiment(tiny_config(data_dir), str(tmp_path))
  report = json.load(open(tmp_path / "report.json"))
  bits = str(report["bits"])
  # The report's mAP is the metric recomputed from the run's own codes.
  arrays = result.results["arrays"]
  for d, (qm, dm) in {"i2p": ("image", "point"), "p2i": ("point", "image")}.items():
    want = mean_average_precision(arrays["query"][qm], arrays["database"][dm],
                                  arrays["query"]["label"], arrays["database"]["label"])
    assert report["map"][d][bits] == want
    assert report["map_tie_aware"][d][bits] == tie_aware_mean_average_precision(
        arrays["query"][qm], arrays["database"][dm], arrays["query"]["label"],
        arrays["database"]["label"])
  assert report["num_queries"] == len(arrays["query"]["label"]) > 0
  # Code usage of the run's own codes (set count and majority share in NumPy here).
  for role in ("query", "database"):
    for m in ("image", "point"):
      codes, u = arrays[role][m], report["code_usage"][role][m]
      assert u["distinct"] == len({tuple(c) for c in np.asarray(codes).tolist()})
      assert u["majority_fraction"] == pytest.approx(
          np.maximum((codes > 0).mean(0), (codes <= 0).mean(0)).mean())
  assert "| database point |" in (tmp_path / "report.md").read_text()
  assert report["steps"] == 6 and report["train_seconds"] > 0
  # The resolved config: the variant's input sizes (tiny: 256 points, 32 px), not None.
  assert report["config"]["variant"] == "tiny"
  assert report["config"]["input"]["num_points"] == 256
  assert report["config"]["input"]["image_size"] == 32
  assert report["config_fingerprint"] == result.config.fingerprint()
  # The run is loadable for inference: same params, and its codes are the evaluator's.
  trained = load_trained(str(tmp_path))
  assert trained.step == 6 and trained.fingerprint["config_hash"] == report["config_fingerprint"]
  assert_trees_close(jax.tree.map(np.asarray, trained.params), params_of(result), rtol=0, atol=0)
  # The evaluator's query codes and labels are the model's own, object by object: each
  # query record read here (its fixed eval view and points) and encoded by one
  # `apply(train=False)` of the loaded params, in record order.
  from cmah_jax.datasets import get_builder  # pylint: disable=import-outside-toplevel
  from cmah_jax.input import eval_example  # pylint: disable=import-outside-toplevel
  cfg = trained.config
  source = get_builder(cfg.dataset.name, cfg.dataset.data_dir,
                       cfg.dataset.config).as_data_source(split="query")
  records = [source[i] for i in range(len(source))]
  inputs = [eval_example(ex, i, cfg.input) for i, ex in enumerate(records)]
  out = trained.model.apply({"params": trained.params},
                            np.stack([im for _, im in inputs]), np.stack([p for p, _ in inputs]),
                            train=False)
  np.testing.assert_array_equal(arrays["query"]["label"], [int(ex["label"]) for ex in records])
  for tower in ("image", "point"):
    np.testing.assert_array_equal(arrays["query"][tower], np.asarray(out[f"{tower}/code"]))
  for f in ("report.md", "pr_curve.png", "retrieval_examples.png", "metrics.jsonl"):
    assert (tmp_path / f).stat().st_size > 0, f
  assert len(losses_of(str(tmp_path))) == 6
  assert int(result.state["step"]) == 6
  assert result.metrics[f"map/i2p/{bits}"] == report["map"]["i2p"][bits]
  # The learned quantiser: saved beside the checkpoints; the report's "itq" block scores
  # its codes of the run's own continuous codes (recomputed here in NumPy).
  q = quantizer_lib.load(str(tmp_path))
  assert q is not None and q.bits == int(bits)
  np.testing.assert_allclose(np.asarray(q.rotation) @ np.asarray(q.rotation).T,
                             np.eye(int(bits)), atol=1e-5)
  def requantized(role, m):
    h = np.asarray(arrays[role][f"{m}/h"], np.float64)
    return np.where((h - q.mean) @ q.rotation >= 0, 1.0, -1.0)
  for d, (qm, dm) in {"i2p": ("image", "point"), "p2i": ("point", "image")}.items():
    assert report["itq"]["map_tie_aware"][d][bits] == pytest.approx(
        tie_aware_mean_average_precision(requantized("query", qm), requantized("database", dm),
                                         arrays["query"]["label"],
                                         arrays["database"]["label"]), abs=1e-12)
  assert result.metrics[f"itq/map/i2p/{bits}"] == report["itq"]["map"]["i2p"][bits]
  assert "ITQ codes" in (tmp_path / "report.md").read_text()
  # A report written before the quantiser existed gets it from the final checkpoint,
  # without training again: the same numbers.
  old = {k: v for k, v in report.items() if k != "itq"}
  with open(tmp_path / "report.json", "w") as f:
    json.dump(old, f)
  os.remove(tmp_path / "quantizer.npz")
  added = run.add_quantizer(str(tmp_path))
  assert added["itq"]["map_tie_aware"] == report["itq"]["map_tie_aware"]
  assert json.load(open(tmp_path / "report.json"))["itq"]["map"] == report["itq"]["map"]
  assert len(losses_of(str(tmp_path))) == 6


def test_resume_after_signal_matches_uninterrupted(data_dir, tmp_path, monkeypatch):
  full = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "full"))

  # Interrupted run: SIGTERM arrives right after the step-3 checkpoint is started.
  real_save = checkpointing.save
  monkeypatch.setattr(checkpointing, "save", signal_after_checkpoint(real_save, 3))
  stopped = run.run_experiment(tiny_config(data_dir), str(tmp_path / "resumed"))
  assert stopped.metrics["stopped_at"] == 3
  assert not (tmp_path / "resumed" / "report.json").exists()
  monkeypatch.setattr(checkpointing, "save", real_save)
  resumed = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "resumed"))
  assert int(resumed.state["step"]) == 6
  assert_trees_close(params_of(resumed), params_of(full), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses_of(str(tmp_path / "resumed")),
                             losses_of(str(tmp_path / "full")), rtol=1e-5)


def _at_step(monkeypatch, at_step, *, poison=False, sigterm=False):
  """When step `at_step`'s batch is drawn: `poison` makes its points NaN, `sigterm` sends
  this process SIGTERM (the step then runs, and the loop sees the stop after it)."""
  from cmah_jax.input import pipeline  # pylint: disable=import-outside-toplevel
  real_next = pipeline.TrainPipeline.__next__

  def patched_next(self):
    step = self.step
    batch = real_next(self)
    if step == at_step - 1:
      if poison:
        batch = dict(batch, points=batch["points"] * float("nan"))
      if sigterm:
        os.kill(os.getpid(), signal.SIGTERM)
    return batch

  monkeypatch.setattr(pipeline.TrainPipeline, "__next__", patched_next)


def test_a_stop_between_log_and_checkpoint_steps_loses_nothing(data_dir, tmp_path,
                                                              monkeypatch):
  """Logging every 2 steps, checkpoints (which log too) at 3 and 6, SIGTERM during step 5:
  the open window (step 5) is logged and checked, step 5 saved, and the resumed run logs step 6 on
  its own: the per-step losses are the uninterrupted run's. Its training time is the
  whole run's, both invocations. A NaN in the stopping step is caught, not saved."""
  config = lambda: tiny_config(data_dir, log_every_steps=2)
  full = train.train_and_evaluate(config(), str(tmp_path / "full"))
  rows = lambda wd: {r["step"]: r for r in read_jsonl(os.path.join(wd, "metrics.jsonl"))
                     if "loss/total" in r}
  with monkeypatch.context() as m:
    _at_step(m, 5, sigterm=True)
    stopped = run.run_experiment(config(), str(tmp_path / "resumed"))
  assert stopped.metrics["stopped_at"] == 5
  first = rows(str(tmp_path / "resumed"))
  assert sorted(first) == [2, 3, 4, 5]
  first_seconds = training_seconds(list(first.values()))
  resumed = run.run_experiment(config(), str(tmp_path / "resumed"))
  assert int(resumed.state["step"]) == 6
  assert_trees_close(params_of(resumed), params_of(full), rtol=1e-5, atol=1e-6)
  got, want = rows(str(tmp_path / "resumed")), rows(str(tmp_path / "full"))
  assert sorted(got) == [2, 3, 4, 5, 6] and sorted(want) == [2, 3, 4, 6]
  for s in (2, 3, 4):
    assert got[s]["loss/total"] == pytest.approx(want[s]["loss/total"], rel=1e-5)
  assert (got[5]["loss/total"] + got[6]["loss/total"]) / 2 == pytest.approx(
      want[6]["loss/total"], rel=1e-5)  # the window 5-6, in two parts
  report = json.load(open(tmp_path / "resumed" / "report.json"))
  assert report["train_seconds"] == pytest.approx(training_seconds(list(got.values())))
  assert report["train_seconds"] > first_seconds > 0

  with monkeypatch.context() as m:
    _at_step(m, 5, poison=True, sigterm=True)
    with pytest.raises(FloatingPointError, match=r"at step 5 .*Last good checkpoint: 3"):
      train.train_and_evaluate(config(), str(tmp_path / "nan"))
  manager = checkpointing.make_manager(str(tmp_path / "nan" / "checkpoints"), max_to_keep=2)
  assert manager.latest_step() == 3  # the NaN state was not saved
  manager.close()


def test_restore_on_another_topology_and_device_count_equivalence(data_dir, tmp_path,
                                                                  monkeypatch):
  # 6 steps on 1 device, on 2 devices, and 3 steps on 4 devices resumed on 1 device.
  one = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "one"),
                                 devices=jax.devices()[:1])
  two = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "two"),
                                 devices=jax.devices()[:2])
  np.testing.assert_allclose(losses_of(str(tmp_path / "two")),
                             losses_of(str(tmp_path / "one")), rtol=1e-4)
  assert_trees_close(params_of(two), params_of(one), rtol=1e-3, atol=1e-5)

  with pytest.raises(ValueError, match="input.batch_size"):
    train.train_and_evaluate(tiny_config(data_dir, **{"input.batch_size": 6}),
                             str(tmp_path / "bad"), devices=jax.devices()[:4])
  part = tiny_config(data_dir, steps=6, checkpoint_every_steps=3)
  # Stop the 4-device run after its step-3 checkpoint, then resume it on 1 device.
  workdir = str(tmp_path / "moved")
  real_save = checkpointing.save
  monkeypatch.setattr(checkpointing, "save", signal_after_checkpoint(real_save, 3))
  stopped = train.train_and_evaluate(part, workdir, devices=jax.devices()[:4])
  assert stopped.metrics["stopped_at"] == 3
  monkeypatch.setattr(checkpointing, "save", real_save)
  moved = train.train_and_evaluate(part, workdir, devices=jax.devices()[:1])
  assert int(moved.state["step"]) == 6
  assert_trees_close(params_of(moved), params_of(one), rtol=1e-3, atol=1e-5)


def test_clear_errors(data_dir, tmp_path):
  with pytest.raises(ValueError, match="Unknown config argument 'bitz'"):
    default.get_config("bitz=3")
  with pytest.raises(ValueError, match="Unknown dataset 'nope'.*config.dataset.name"):
    train.train_and_evaluate(tiny_config(data_dir, **{"dataset.name": "nope"}),
                             str(tmp_path / "a"))
  c = tiny_config(data_dir)
  c.model.overrides = {"depthh": 3}
  with pytest.raises(ValueError, match="depthh"):
    train.train_and_evaluate(c, str(tmp_path / "b"))
  with pytest.raises(FileNotFoundError, match="config.init_from"):
    train.train_and_evaluate(tiny_config(data_dir, init_from=str(tmp_path / "missing")),
                             str(tmp_path / "c"))


_WORKER = textwrap.dedent("""
    import os, sys
    import jax
    jax.config.update("jax_compilation_cache_dir", os.environ["CACHE"])
    pid, n, port, workdir, data_dir = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                       sys.argv[4], sys.argv[5])
    if n > 1:
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n,
                                 process_id=pid)
    sys.path.insert(0, os.environ["REPO"])
    from configs import default
    from cmah_jax import run
    c = default.get_config(f"runlocal,steps=4,data_dir={data_dir}")
    c.log_every_steps = 1
    run.run_experiment(c, workdir)
    if n > 1:
      jax.distributed.shutdown()
""")


def _free_port():
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(data_dir, tmp_path):
  """2 processes x 1 CPU device (jax.distributed on 127.0.0.1) == 1 process x 2 devices.

  This used to abort about one run in three with gloo's "Received data size doesn't match
  expected size ... collective mismatch": `jnp.diagonal` in the contrastive loss compiled
  to a conditional whose branch held all-gathers, XLA:CPU ran them concurrently with the
  step's other collectives, and XLA's gloo collectives share one tag. The loss now uses
  `losses.square_diagonal`, and the trainer refuses collectives inside control flow on
  several CPU processes (tests/test_robustness.py).
  """
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  env = dict(os.environ, REPO=REPO, JAX_PLATFORMS="cpu",
             CACHE=str(os.path.join(REPO, ".cache", "jax_tests")))
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  subprocess.run([sys.executable, str(script), "0", "1", "0", str(tmp_path / "single"),
                  data_dir], env=env, check=True, timeout=600)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, str(script), str(i), "2", port,
                             str(tmp_path / "multi"), data_dir], env=env)
           for i in range(2)]
  for p in procs:
    assert p.wait(timeout=600) == 0
  np.testing.assert_allclose(losses_of(str(tmp_path / "multi")),
                             losses_of(str(tmp_path / "single")), rtol=1e-4)
  single = json.load(open(tmp_path / "single" / "report.json"))
  multi = json.load(open(tmp_path / "multi" / "report.json"))
  for d in ("i2p", "p2i"):
    assert multi["map"][d] == pytest.approx(single["map"][d], rel=1e-6)


def test_nan_loss_stops_naming_the_step(data_dir, tmp_path, monkeypatch):
  """A NaN in the 4th batch's points stops the run with a message naming step 4."""
  _at_step(monkeypatch, 4, poison=True)
  with pytest.raises(FloatingPointError, match=r"at step 4 \(window of steps 4-6\)"):
    train.train_and_evaluate(tiny_config(data_dir, log_every_steps=6), str(tmp_path))


def test_init_from_warm_starts_params(data_dir, tmp_path):
  """`config.init_from` loads another run's params (and rejects a model they don't fit)."""
  source = train.train_and_evaluate(tiny_config(data_dir, steps=3), str(tmp_path / "src"))
  ckpt = str(tmp_path / "src" / "checkpoints")
  warm = train.train_and_evaluate(tiny_config(data_dir, steps=0, init_from=ckpt),
                                  str(tmp_path / "warm"))
  assert int(warm.state["step"]) == 0
  assert_trees_close(params_of(warm), params_of(source), rtol=0, atol=0)
  other_bits = tiny_config(data_dir, steps=0, init_from=ckpt)
  other_bits.model.bits = 32
  with pytest.raises(ValueError, match="config.init_from=.*shape"):
    train.train_and_evaluate(other_bits, str(tmp_path / "bad"))


def test_periodic_evaluation_compiles_the_encoder_once(data_dir, tmp_path, monkeypatch):
  """Evaluations at steps 2 and 4 and the final one share one trace of the encoder."""
  made = []

  class Recording(evaluate.RetrievalEvaluator):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      made.append(self)

  monkeypatch.setattr(train, "RetrievalEvaluator", Recording)
  result = train.train_and_evaluate(tiny_config(data_dir, eval_every_steps=2),
                                    str(tmp_path))
  rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows if "chance_map" in r] == [2, 4, 6]
  assert len(made) == 1 and made[0].trace_count == 1
  # The periodic numbers are real evaluations: the last one equals the final result.
  bits = result.config.model.bits
  assert rows[-1][f"map/i2p/{bits}"] == result.metrics[f"map/i2p/{bits}"]


def test_progress_line_shows_every_logged_term():
  """The bracket names L_c, L_3D, L_2D first, then any term an objective adds, sorted; the
  total and the non-loss metrics are not repeated there."""
  m = {"loss/total": 9.0, "loss/contrastive": 1.23456, "loss/point_recon": 0.01,
       "loss/image_recon": 0.5, "loss/relation": 0.55, "loss/balance": 2.0,
       "learning_rate": 1e-3, "grad_norm": 3.0}
  assert train.progress_terms(m) == (
      "c 1.2346, 3d 0.0100, 2d 0.5000, balance 2.0000, relation 0.5500")
  assert train.progress_terms({"loss/contrastive": 2.0, "loss/total": 2.0}) == "c 2.0000"


def test_main_exits_3_when_stopped_by_a_signal(data_dir, tmp_path):
  """`main.py` stopped by SIGTERM saves a checkpoint and exits 3 (resumable, not done), so
  a scheduler's requeue-on-failure resumes it; it used to exit 0, as if finished."""
  proc = subprocess.Popen(
      [sys.executable, "main.py", f"--config=configs/default.py:runlocal,steps=100000,"
       f"data_dir={data_dir}", "--config.log_every_steps=1", f"--workdir={tmp_path}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  for line in proc.stdout:  # training has started
    if line.startswith("step 2/"):
      break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 3, err[-3000:]
  assert "Stopped by signal at step" in out and "Traceback" not in err
  assert not (tmp_path / "report.json").exists()
  assert any(name.isdigit() for name in os.listdir(tmp_path / "checkpoints"))
