"""Nothing lost, nothing silently wrong: hard kills, changed configs, damaged checkpoints,
schedules sized from the dataset, full or read-only disks, collectives inside control flow.

Training runs use the tiny `runlocal` config (6 steps, checkpoints at 3 and 6); the hard
kills happen in subprocesses (`_DRIVER`), everything else in-process.
"""
import asyncio
import dataclasses
import gc
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import checkpointing, collectives, losses, optim, resume, run, train
from cmah_jax import config as config_lib
from cmah_jax import sharding as shd
from cmah_jax.inference import load_trained
from cmah_jax.metric_writer import JsonlWriter, read_jsonl
from configs import default
from tiny_runs import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("CMAH_TEST_COMPILE_CACHE", os.path.join(REPO, ".cache", "jax_tests"))
TIMING = ("train_seconds", "eval_seconds")  # the only report.json fields allowed to differ


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def params(workdir):
  return jax.tree.map(np.asarray, load_trained(str(workdir)).params)


def assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def losses_of(workdir):
  return [r["loss/total"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "loss/total" in r]


def read_text(path):
  with open(path) as f:
    return f.read()


def report_without_timing(workdir):
  with open(os.path.join(workdir, "report.json")) as f:
    report = json.load(f)
  return {k: v for k, v in report.items() if k not in TIMING}


# ----------------------------------------------------------------------------- kill -9
_DRIVER = textwrap.dedent("""
    # A training run that SIGKILLs itself at one point: step:N (right after step N's
    # computation is dispatched), save:N (inside Orbax's commit of step N: data written,
    # not yet renamed), eval:N (mid-way through the periodic evaluation at step N, once
    # checkpoint N-1 is committed), or none.
    import os, signal, sys, time
    import jax
    jax.config.update("jax_compilation_cache_dir", os.environ["CACHE"])
    sys.path.insert(0, os.environ["REPO"])
    workdir, data_dir, kill = sys.argv[1], sys.argv[2], sys.argv[3]
    mode, _, at = kill.partition(":")
    at = int(at or 0)

    def die():
      os.kill(os.getpid(), signal.SIGKILL)

    from cmah_jax import evaluate, run, train
    if mode == "step":
      real_compile = train.compile_train_step
      def compile_then_kill(*args, **kwargs):
        compiled = real_compile(*args, **kwargs)
        done = [int(os.environ["START"])]  # the step the run resumes from
        def step_fn(state, batch):
          out = compiled(state, batch)  # dispatched, still computing
          done[0] += 1
          if done[0] == at:
            die()
          return out
        return step_fn
      train.compile_train_step = compile_then_kill
    elif mode == "save":
      from orbax.checkpoint._src.checkpointers import async_checkpointer as ac
      real_commit = ac._on_commit_callback
      def commit_then_kill(tmpdir, *args, **kwargs):
        if os.path.basename(str(tmpdir.get_final())) == str(at):
          die()
        return real_commit(tmpdir, *args, **kwargs)
      ac._on_commit_callback = commit_then_kill
    elif mode == "eval":
      real_encode = evaluate.RetrievalEvaluator.encode
      def encode_then_kill(self, params, split):
        out = real_encode(self, params, split)
        if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
          return out
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
          steps = sum('"loss/total"' in line for line in f)
        if steps == at:  # the periodic evaluation after step `at`, first split done
          ckpt = os.path.join(workdir, "checkpoints", str(at - 1))
          for _ in range(600):
            if os.path.isdir(ckpt):
              break
            time.sleep(0.05)
          die()
        return out
      evaluate.RetrievalEvaluator.encode = encode_then_kill

    from configs import default
    c = default.get_config(f"runlocal,steps=6,data_dir={data_dir}")
    c.log_every_steps = 1
    c.eval_every_steps = 2
    run.run_experiment(c, workdir)
""")


def _run_driver(script, workdir, data_dir, kill, start=0):
  env = dict(os.environ, REPO=REPO, CACHE=CACHE, START=str(start), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(script), str(workdir), data_dir, kill],
                        env=env, capture_output=True, text=True, timeout=600)


def test_kill9_at_several_points_resumes_identically(data_dir, tmp_path):
  """SIGKILL mid-step, inside an async save's commit and during an evaluation; each
  re-run resumes from the newest committed checkpoint, and the end result (parameters,
  report.json but its timings, the logged losses) equals an uninterrupted run."""
  script = tmp_path / "driver.py"
  script.write_text(_DRIVER)
  ref, work = tmp_path / "ref", tmp_path / "killed"
  done = _run_driver(script, ref, data_dir, "none")
  assert done.returncode == 0, done.stderr[-3000:]

  # 1. Mid-step 2, before any checkpoint: nothing saved; the next run starts afresh.
  r = _run_driver(script, work, data_dir, "step:2")
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert not glob.glob(str(work / "checkpoints" / "[0-9]*"))
  # 2. Inside the commit of step 3: the data is written to a temporary directory that is
  #    never renamed, so step 3 does not exist; the next run cleans it up.
  r = _run_driver(script, work, data_dir, "save:3")
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert not os.path.exists(work / "checkpoints" / "3")
  assert glob.glob(str(work / "checkpoints" / "3.orbax-checkpoint-tmp*"))
  # 3. During the evaluation after step 4 (checkpoint 3 committed): resumes from 3.
  r = _run_driver(script, work, data_dir, "eval:4")
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert not glob.glob(str(work / "checkpoints" / "*tmp*"))
  assert os.path.isdir(work / "checkpoints" / "3")
  # 4. Mid-step 5, resumed from 3.
  r = _run_driver(script, work, data_dir, "step:5", start=3)
  assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
  assert "Resumed from" in r.stdout and "at step 3" in r.stdout
  # 5. Uninterrupted to the end.
  r = _run_driver(script, work, data_dir, "none")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "at step 3" in r.stdout

  assert_same_params(params(work), params(ref))
  assert report_without_timing(work) == report_without_timing(ref)
  assert losses_of(str(work)) == losses_of(str(ref))


# ----------------------------------------------------------------------------- changed config
def test_changed_config_stops_with_a_readable_diff(data_dir, tmp_path):
  """A run sized in epochs (from the prepared split), resumed with another temperature and
  length: stopped with `field: old -> new`; frequencies may change; an allowed change
  continues and is recorded; every checkpoint stores its config."""
  workdir = str(tmp_path / "run")
  first = tiny_config(data_dir, total_steps=None, epochs=0.3)  # 80 train // batch 8 = 10
  done = train.train_and_evaluate(first, workdir)
  assert done.config.total_steps == 3 and done.config.epochs == 0.3
  manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=2)
  assert checkpointing.step_config(manager, 3) == done.config.to_dict()
  before = read_text(os.path.join(workdir, "config.json"))

  changed = tiny_config(data_dir, steps=6, **{"loss.temperature": 0.5})
  with pytest.raises(resume.ConfigChangedError) as e:
    run.run_experiment(changed, workdir)
  msg = str(e.value)
  assert "checkpoint step 3" in msg and "--allow_config_change" in msg
  assert "loss.temperature: 0.2 -> 0.5" in msg, msg
  assert "total_steps: 3 -> 6" in msg and "epochs: 0.3 -> None" in msg
  assert "log_every_steps" not in msg
  assert read_text(os.path.join(workdir, "config.json")) == before  # untouched
  assert not os.path.exists(os.path.join(workdir, "report.json"))

  # Frequencies and locations are free: same run, evaluated again.
  same = tiny_config(data_dir, total_steps=None, epochs=0.3, log_every_steps=3,
                     checkpoint_every_steps=1, eval_every_steps=0)
  again = train.train_and_evaluate(same, workdir)
  assert int(again.state["step"]) == 3

  # Allowed: 3 more steps with the new temperature, recorded, stored with step 6.
  longer = run.run_experiment(changed, workdir, allow_config_change=True)
  assert int(longer.state["step"]) == 6
  rows = read_jsonl(os.path.join(workdir, "config_changes.jsonl"))
  assert rows[-1]["resumed_at_step"] == 3
  assert {c["field"] for c in rows[-1]["changes"]} == {"loss.temperature", "total_steps",
                                                      "epochs"}
  manager.reload()
  assert checkpointing.step_config(manager, 6)["loss"]["temperature"] == 0.5
  report = json.loads(read_text(os.path.join(workdir, "report.json")))
  assert report["config"]["total_steps"] == 6
  # The report says the run mixes two configs: the recorded one is the last.
  assert report["config_changes"] == rows
  assert "Resumed at step 3 with a changed config" in read_text(
      os.path.join(workdir, "report.md"))
  assert "`loss.temperature` 0.2 -> 0.5" in read_text(os.path.join(workdir, "report.md"))
  manager.close()


def test_config_diff_and_policy():
  a = config_lib.resolve(default.get_config("runlocal"))
  b = config_lib.resolve(default.get_config("runlocal,bits=32,steps=9"))
  diff = resume.config_diff(a.to_dict(), b.to_dict())
  assert ("model.bits", 64, 32) in diff and ("total_steps", 6, 9) in diff
  assert "model.bits: 64 -> 32" in resume.format_diff(diff)
  # A field added since an old checkpoint, at its default now, is not a change.
  old = a.to_dict()
  del old["epochs"]
  defaults = config_lib.resolve(config_lib.base_config()).to_dict()
  assert resume.check_config(old, a, where="x", defaults=defaults) == []
  # ... except a field whose absence stands for the old behaviour (per-axis scaling,
  # resume.ABSENT_MEANS), which is a change where isotropic scaling is asked for now.
  old = a.to_dict()
  del old["input"]["point_scale_isotropic"]
  assert a.input.point_scale_isotropic is False  # per-axis: the default since round 16b
  assert resume.check_config(old, a, where="x", defaults=defaults) == []
  iso = dataclasses.replace(a, input=dataclasses.replace(a.input, point_scale_isotropic=True))
  with pytest.raises(resume.ConfigChangedError,
                     match="input.point_scale_isotropic: False -> True"):
    resume.check_config(old, iso, where="x", defaults=defaults)
  # A field added later (config.ADDED_LATER) whose default has moved since: its absence is
  # the value runs had then (L_2D weight 1, MAE's linear patch embedding), a change now.
  assert a.loss.image_recon_weight == 0.1 and a.model.image_stem_dims == ()  # tiny: linear
  old = a.to_dict()
  del old["loss"]["image_recon_weight"], old["model"]["image_stem_dims"]
  with pytest.raises(resume.ConfigChangedError) as err:
    resume.check_config(old, a, where="x", defaults=defaults)
  assert "loss.image_recon_weight: 1.0 -> 0.1" in str(err.value)
  assert "image_stem_dims" not in str(err.value)  # absent meant (), as tiny has now
  small = config_lib.resolve(default.get_config("steps=6"))
  old = small.to_dict()
  del old["model"]["image_stem_dims"]
  with pytest.raises(resume.ConfigChangedError, match=r"model.image_stem_dims: \[\] -> \[32\]"):
    resume.check_config(old, small, where="x", defaults=defaults)
  with pytest.raises(resume.ConfigChangedError, match="model.bits: 64 -> 32"):
    resume.check_config(a.to_dict(), b, where="x")
  assert resume.check_config(a.to_dict(), b, where="x", allow_change=True)
  assert resume.check_config(None, b, where="x") == []


# ----------------------------------------------------------------------------- damaged
def _damage(step_dir, how):
  if how == "truncated array file":
    files = sorted(glob.glob(f"{step_dir}/default/ocdbt.process_0/d/*"), key=os.path.getsize)
    with open(files[-1], "r+b") as f:
      f.truncate(os.path.getsize(files[-1]) // 2)
  elif how == "array files deleted":
    for f in glob.glob(f"{step_dir}/default/ocdbt.process_0/d/*"):
      os.remove(f)
  elif how == "item metadata deleted":
    os.remove(f"{step_dir}/default/_METADATA")
  elif how == "garbage step metadata":
    with open(f"{step_dir}/{checkpointing.STEP_METADATA_FILE}", "w") as f:
      f.write("{\x00not json")
  elif how == "emptied directory":
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)
  else:
    raise ValueError(how)


DAMAGE = ("truncated array file", "array files deleted", "item metadata deleted",
          "garbage step metadata", "emptied directory")


def test_damaged_latest_checkpoint_falls_back_to_the_previous(data_dir, tmp_path, capsys):
  """Step 6 damaged in five ways: each time step 6 is named with its reason and moved
  aside, and step 3 restored; the resumed run retrains 4-6 to the uninterrupted result.
  All checkpoints damaged: a clear error naming each."""
  ref = str(tmp_path / "ref")
  train.train_and_evaluate(tiny_config(data_dir), ref)
  for i, how in enumerate(DAMAGE):
    workdir = str(tmp_path / f"d{i}")
    shutil.copytree(ref, workdir)
    _damage(os.path.join(workdir, "checkpoints", "6"), how)
    if i == 0:  # the whole run: resumed from 3, same end as the uninterrupted run
      capsys.readouterr()
      result = train.train_and_evaluate(tiny_config(data_dir), workdir)
      out = capsys.readouterr().out
      assert "Checkpoint step 6 in" in out and "is damaged" in out, out[-2000:]
      # the reason is TensorStore's root cause, not Orbax's wrapper with its spec dump
      assert 'Error reading "' in out and "TensorStore details" not in out, out[-2000:]
      assert "Resumed from" in out and "at step 3" in out
      assert int(result.state["step"]) == 6
      assert_same_params(params(workdir), params(ref))
      assert losses_of(workdir) == losses_of(ref)
    else:  # the restore alone (as saved, without target shapes)
      manager = checkpointing.make_manager(os.path.join(workdir, "checkpoints"),
                                           max_to_keep=2)
      restored = checkpointing.restore_latest(manager, None)
      assert (restored.step, [s for s, _ in restored.damaged]) == (3, [6]), how
      reason = restored.damaged[0][1]
      assert "TensorStore details" not in reason and "\n" not in reason, (how, reason)
      if how == "array files deleted":
        assert reason.startswith("ValueError: ") and 'Error reading "' in reason, reason
      assert manager.all_steps() == [3], how
      manager.close()
    assert os.path.isdir(os.path.join(workdir, "checkpoints.damaged", "6")), how

  workdir = str(tmp_path / "all")
  shutil.copytree(ref, workdir)
  _damage(os.path.join(workdir, "checkpoints", "6"), "array files deleted")
  _damage(os.path.join(workdir, "checkpoints", "3"), "garbage step metadata")
  with pytest.raises(checkpointing.DamagedCheckpointError,
                     match=r"No intact checkpoint in .*step 6: .*step 3: unreadable"):
    train.train_and_evaluate(tiny_config(data_dir), workdir)


def test_innermost_cause_follows_the_chain_and_stops_where_asked():
  """Hand-built chains: the innermost cause; the first OSError on the way when asked; a
  cycle (`raise e from e`, or two errors each the other's cause) ends the walk."""
  inner = ValueError("OUT_OF_RANGE: Error reading \"w/0.0\"\nsecond line")
  disk = OSError(28, "No space left on device")
  middle = RuntimeError("middle")
  middle.__cause__ = inner
  disk.__cause__ = middle
  outer = Exception("Encountered error while reading array index: ...")
  outer.__cause__ = disk
  assert checkpointing._innermost_cause(outer) is inner
  assert checkpointing._innermost_cause(outer, stop_at=OSError) is disk
  assert checkpointing._innermost_cause(inner) is inner
  assert checkpointing._one_line(inner) == 'ValueError: OUT_OF_RANGE: Error reading "w/0.0"'
  itself = ValueError("itself")
  itself.__cause__ = itself
  assert checkpointing._innermost_cause(itself) is itself
  a, b = ValueError("a"), ValueError("b")
  a.__cause__, b.__cause__ = b, a
  assert checkpointing._innermost_cause(a) is b


def _unraisable(obj, error):
  return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                               exc_traceback=error.__traceback__, err_msg=None, object=obj)


def _closed_loop_error():
  """The real error of a callback handed to a closed asyncio loop (with its traceback)."""
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(lambda: None)
  except RuntimeError as e:
    return e
  raise AssertionError("a closed loop accepted a callback")


def _dropped_unread(make):
  """Run `make(loop)` (a failed task or future) on a fresh loop and drop it unread, so that
  asyncio logs "... exception was never retrieved" when it is collected."""
  loop = asyncio.new_event_loop()
  try:
    pending = make(loop)
    loop.run_until_complete(asyncio.sleep(0))
    assert pending.done()
    del pending
    gc.collect()
  finally:
    loop.close()


def test_failed_read_leftovers_are_not_printed_and_everything_else_is(monkeypatch, caplog):
  """The filters drop exactly the four printouts an abandoned Orbax read leaves (its real
  coroutine; asyncio's own never-retrieved-task record; and, only after a read failed,
  TensorStore's never-retrieved future and a closed loop's callback error) and pass on
  everything else; `install` twice keeps one. Only this test's own errors are counted:
  a leftover of an earlier test's damaged restore may be collected meanwhile."""
  from orbax.checkpoint._src.serialization import serialization
  from cmah_jax import orbax_noise
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  asyncio_logger = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_logger, "filters", [])
  orbax_noise.install()
  hook = orbax_noise.install()
  assert sys.unraisablehook is hook and hook.previous == seen.append
  assert asyncio_logger.filters == [hook]

  async def other_coroutine():
    pass

  orbax_read = serialization._read_array_index_and_device_put(  # created, never run
      [], (), None, global_shape=(), new_shard_shape=(), dtype=None, byte_limiter=None,
      strict=True, dll=None, memory_kind=None)
  other = other_coroutine()
  wrapped = Exception("Encountered error while reading array index: (slice(0, 4, 1),). "
                      "See full TensorStore details: ...")
  something_else = ValueError("something else")
  loop_closed = _closed_loop_error()
  ours = RuntimeError("Event loop is closed")  # same text, raised outside asyncio
  errors = (wrapped, something_else, loop_closed, ours)

  def seen_here():
    return [args for args in seen if any(args.exc_value is e for e in errors)]

  try:
    hook(_unraisable(orbax_read, wrapped))
    assert seen_here() == []
    passed_on = [_unraisable(other, wrapped),
                 _unraisable(orbax_read, something_else),
                 _unraisable(None, wrapped),
                 _unraisable(None, loop_closed)]   # no read has failed yet
    for args in passed_on:
      hook(args)
    orbax_noise.expect_failed_read_leftovers()
    hook(_unraisable(None, loop_closed))
    hook(_unraisable(None, ours))
    assert seen_here() == passed_on + [seen_here()[-1]]
    assert seen_here()[-1].exc_value is ours
  finally:
    orbax_read.close()
    other.close()

  async def async_deserialize(message):  # the name of Orbax's per-array read task
    raise Exception(message)

  def task_never_retrieved(message):
    _dropped_unread(lambda loop: loop.create_task(async_deserialize(message)))

  def future_never_retrieved(error):
    """TensorStore's reads are futures."""
    def failed_future(loop):
      future = loop.create_future()
      future.set_exception(error)
      return future
    _dropped_unread(failed_future)

  caplog.set_level(logging.ERROR, logger="asyncio")
  tensorstore_error = ValueError('OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT '
                                 'database at local file "/ck/6/default/": Requested byte '
                                 'range [0, 10) is not valid for value of size 5')
  task_never_retrieved(str(wrapped))
  task_never_retrieved("an error of the user's own")
  future_never_retrieved(tensorstore_error)  # dropped: a read has failed
  monkeypatch.setattr(hook, "read_failed", False)
  future_never_retrieved(tensorstore_error)  # passed on: no read has failed
  future_never_retrieved(ValueError("the user's own"))
  mine = {str(wrapped), "an error of the user's own", str(tensorstore_error),
          "the user's own"}
  logged = [str(r.exc_info[1]) for r in caplog.records
            if r.name == "asyncio" and r.exc_info and str(r.exc_info[1]) in mine]
  assert logged == ["an error of the user's own", str(tensorstore_error),
                    "the user's own"], logged


# ----------------------------------------------------------------------------- schedule
def test_paper_schedule_is_sized_from_the_prepared_dataset():
  """The issue's case: ShapeNet-55 layout with ~1,200 training objects, batch 64."""
  from configs import shapenet55
  by_steps = config_lib.resolve(
      shapenet55.get_config("variant=small,dataset_config=small,steps=1200,batch=64"))
  assert (by_steps.total_steps, by_steps.epochs, by_steps.optim.warmup_steps) == (
      1200, None, None)
  sized = config_lib.resolve_schedule(by_steps, 1200)
  assert (sized.total_steps, sized.optim.warmup_steps, sized.eval_every_steps) == (
      1200, 40, 100)  # warm-up 1/30 and evaluation 1/12 of the run, as 10 and 25 of 300
  lr = optim.learning_rate_schedule(sized.optim, 64, sized.total_steps)
  peak = optim.peak_learning_rate(sized.optim, 64)
  assert float(lr(50)) > 0.99 * peak  # no longer warming up at step 50 (was 1e-5)

  by_epochs = config_lib.resolve(shapenet55.get_config("variant=small,batch=64"))
  assert (by_epochs.total_steps, by_epochs.epochs) == (None, 300)
  sized = config_lib.resolve_schedule(by_epochs, 1200)
  spe = 1200 // 64
  assert (sized.total_steps, sized.optim.warmup_steps, sized.eval_every_steps) == (
      300 * spe, 10 * spe, 25 * spe)
  assert config_lib.resolve_schedule(sized, 5) is sized  # nothing left to size
  with pytest.raises(ValueError, match=r"batch_size=64 exceeds the 40 training examples"):
    config_lib.resolve_schedule(by_epochs, 40)
  runlocal = config_lib.resolve(shapenet55.get_config("runlocal"))
  assert (runlocal.total_steps, runlocal.epochs, runlocal.optim.warmup_steps) == (6, None, 2)

  c = default.get_config()
  c.total_steps = None
  with pytest.raises(ValueError, match="needs config.epochs"):
    config_lib.resolve(c)
  c.total_steps, c.epochs = 10, 2.0
  with pytest.raises(ValueError, match="both set"):
    config_lib.resolve(c)


# ----------------------------------------------------------------------------- disk
_FULL_DISK = textwrap.dedent("""
    # Resume a run with every file capped at LIMIT bytes (RLIMIT_FSIZE; writes past it fail
    # with EFBIG, like a full disk). No persistent compilation cache: JAX writes its entries
    # in place, and a truncated one would stay in the shared test cache.
    import os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = ["main.py", f"--config=configs/default.py:runlocal,steps=6,data_dir={sys.argv[2]}",
                f"--workdir={sys.argv[1]}"]
    sys.path.insert(0, os.environ["REPO"])
    os.chdir(os.environ["REPO"])
    import runpy
    runpy.run_path("main.py", run_name="__main__")
""")


def test_full_disk_stops_clearly_and_keeps_the_last_checkpoint(data_dir, tmp_path):
  """A save that cannot be written stops the run naming the step and the cause, and the
  previous checkpoint stays restorable; a workdir where nothing can be written is refused
  up front."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(data_dir), workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))  # as if stopped after step 3
  script = tmp_path / "full_disk.py"
  script.write_text(_FULL_DISK)
  env = dict(os.environ, REPO=REPO, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, str(script), workdir, data_dir, str(300_000)],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 1, r.stderr[-3000:]
  assert "CheckpointWriteError: Writing checkpoint step 6 to" in r.stderr, r.stderr[-3000:]
  assert "File too large [errno 27]. The last complete checkpoint (step 3) is intact" in r.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "6"))
  trained = load_trained(workdir)
  assert trained.step == 3

  # Nothing can be written at all: refused before any work, naming the workdir.
  r = subprocess.run([sys.executable, str(script), str(tmp_path / "new"), data_dir, "0"],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 1 and "is not writable" in r.stderr, r.stderr[-3000:]


def test_read_only_workdir_is_refused(tmp_path):
  """A read-only workdir is refused before any work, naming it. (As root, the run goes
  through `setpriv --bounding-set=-dac_override`, without which permission bits are
  ignored.)"""
  readonly = tmp_path / "readonly"
  readonly.mkdir()
  readonly.chmod(0o555)
  prefix = []
  if os.geteuid() == 0:
    if not shutil.which("setpriv"):
      pytest.skip("running as root without setpriv: permission bits cannot be enforced")
    prefix = ["setpriv", "--bounding-set=-dac_override"]
  code = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {REPO!r})
      from cmah_jax import checkpointing, train
      from configs import default
      try:
        train.train_and_evaluate(default.get_config("runlocal,data_dir={tmp_path}/data"),
                                 "{readonly}/run")
      except checkpointing.CheckpointWriteError as e:
        sys.exit(f"refused: {{e}}")
  """)
  try:
    r = subprocess.run(prefix + [sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  finally:
    readonly.chmod(0o755)
  assert r.returncode == 1, r.stderr[-3000:]
  assert f"refused: The workdir {readonly}/run is not writable (Permission denied)" in (
      r.stderr), r.stderr[-3000:]
  assert not os.path.exists(readonly / "run") and not os.path.exists(tmp_path / "data")


# ----------------------------------------------------------------------------- collectives
def test_no_collectives_inside_control_flow_for_gloo():
  """Root cause of the 2-process CPU abort: `jnp.diagonal` of the batch-sharded logits
  compiles to a conditional whose branch holds all-gathers; `square_diagonal` does not,
  and the trainer refuses such a step on several CPU processes."""
  mesh = shd.make_mesh(jax.devices()[:2])
  put = lambda x: jax.device_put(x, shd.data_sharding(mesh))  # noqa: E731
  rng = np.random.default_rng(0)
  h_p, h_i = (put(rng.normal(size=(8, 16)).astype(np.float32)) for _ in range(2))

  def compiled_text(diag):
    def loss(a, b):
      logits = a @ b.T / 0.1
      d = diag(logits)
      return jnp.mean(jax.nn.logsumexp(logits, axis=1) - d)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(h_p, h_i).compile().as_text()

  bad = collectives.collectives_outside_entry(compiled_text(jnp.diagonal))
  assert bad and all("diagonal" in b for b in bad)
  with pytest.raises(RuntimeError, match="collective mismatch"):
    collectives.check_for_gloo(compiled_text(jnp.diagonal))
  assert collectives.collectives_outside_entry(compiled_text(losses.square_diagonal)) == []
  x = rng.normal(size=(8, 8)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(losses.square_diagonal(put(x))), np.diagonal(x))


def test_ucch_losses_have_no_collectives_inside_control_flow():
  """UCCH's in-batch and ranking losses (the `ucch` objective) take their diagonals with
  `square_diagonal` too, so the objective may train on several CPU processes."""
  from cmah_jax.baselines import deep  # pylint: disable=import-outside-toplevel
  mesh = shd.make_mesh(jax.devices()[:2])
  put = lambda x: jax.device_put(x, shd.data_sharding(mesh))  # noqa: E731
  rng = np.random.default_rng(1)
  u_x, u_y = (put(np.tanh(rng.normal(size=(8, 16))).astype(np.float32)) for _ in range(2))
  for name, fn in [("in_batch", lambda a, b: deep.in_batch_contrastive_loss(a, b, 0.2)),
                   ("ranking", lambda a, b: deep.cross_modal_ranking_loss(a, b, 0.2, 0.1))]:
    text = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(u_x, u_y).compile().as_text()
    assert collectives.collectives_outside_entry(text) == [], name


def test_a_metrics_line_cut_by_a_kill_does_not_stop_the_resume(tmp_path):
  """A kill while a row is written leaves a cut last line: reading skips it and resuming
  (`truncate_after`) drops it; NaN / inf, also inside arrays, are written as null."""
  writer = JsonlWriter(str(tmp_path))
  writer.write(1, {"loss": 0.5, "per_bit": np.array([0.25, np.nan, np.inf])})
  writer.write(2, {"loss": float("nan")})
  with open(writer.path, "a") as f:
    f.write('{"step": 3, "loss": 0.2')            # the row the kill cut
  assert read_jsonl(writer.path) == [{"step": 1, "loss": 0.5, "per_bit": [0.25, None, None]},
                                     {"step": 2, "loss": None}]
  writer.truncate_after(1)
  with open(writer.path) as f:
    assert [json.loads(line) for line in f] == [
        {"step": 1, "loss": 0.5, "per_bit": [0.25, None, None]}]
  assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left
  # Rows need no step to be read (config_changes.jsonl's have none).
  resume.record_change(str(tmp_path), 3, [("loss.temperature", 0.2, 0.5)])
  assert read_jsonl(str(tmp_path / "config_changes.jsonl")) == [{
      "resumed_at_step": 3, "changes": [{"field": "loss.temperature", "old": 0.2, "new": 0.5}]}]


def test_a_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  """`gs://b/run` would become the local folder `./gs:/b/run` on each worker: refused,
  named, by the trainer and by the checkpoint manager, with no folder made."""
  monkeypatch.chdir(tmp_path)
  for call in (lambda: train.train_and_evaluate(default.get_config("runlocal"), "gs://b/run"),
               lambda: run.run_experiment(default.get_config("runlocal"), "gs://b/run"),
               lambda: checkpointing.make_manager("gs://b/run/ckpt", max_to_keep=1)):
    with pytest.raises(checkpointing.CheckpointWriteError, match=r"gs://b/run\S* is a URL"):
      call()
  assert os.listdir(tmp_path) == []
  assert checkpointing.local_directory("~/r") == os.path.join(os.path.expanduser("~"), "r")
