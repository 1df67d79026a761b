"""One writer per run directory (`cmah_jax.workdir_lock`): a live holder is refused and
named, a dead one's lock is taken over, nested holds pass, and `run_experiment`, `main.py`
and the suite respect it."""
import json
import os
import socket
import subprocess
import sys

import pytest

from cmah_jax import run, workdir_lock
from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time; from cmah_jax import workdir_lock as w; "
        "w.acquire(sys.argv[1], 'a test holder'); print('held', flush=True); time.sleep(120)")


def _holder_process(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def _write_lock(workdir, **content):
  os.makedirs(workdir, exist_ok=True)
  with open(workdir_lock.lock_path(str(workdir)), "w") as f:
    json.dump(content, f)


def test_a_live_holder_is_refused_and_a_killed_ones_lock_taken_over(tmp_path):
  proc = _holder_process(tmp_path)
  try:
    owner = workdir_lock.holder(str(tmp_path))
    assert owner["pid"] == proc.pid and owner["what"] == "a test holder"
    # Its start time as a naive read of /proc gives it (field 22; the command name, python,
    # has no space), and no earlier than this process's own.
    with open(f"/proc/{proc.pid}/stat") as f:
      assert owner["start_ticks"] == int(f.read().split()[21])
    assert owner["start_ticks"] >= workdir_lock._me()["start_ticks"]  # pylint: disable=protected-access
    with pytest.raises(workdir_lock.WorkdirBusyError,
                       match=rf"in use: a test holder, pid {proc.pid} on host"):
      workdir_lock.acquire(str(tmp_path), "training")
  finally:
    proc.kill()  # SIGKILL: no chance to release the lock
    proc.wait()
  assert os.path.exists(workdir_lock.lock_path(str(tmp_path)))  # left behind, stale
  assert workdir_lock.holder(str(tmp_path)) is None
  assert workdir_lock.acquire(str(tmp_path), "training") is True
  assert workdir_lock.holder(str(tmp_path))["pid"] == os.getpid()
  workdir_lock.release(str(tmp_path))
  assert not os.path.exists(workdir_lock.lock_path(str(tmp_path)))


def test_a_reused_pid_an_empty_file_and_another_host(tmp_path):
  me = workdir_lock._me()  # pylint: disable=protected-access
  if me["start_ticks"] is not None:
    # This process's pid, but another start time: a dead process whose pid was reused.
    _write_lock(tmp_path, pid=me["pid"], host=me["host"], start_ticks=me["start_ticks"] - 1,
                what="old")
    assert workdir_lock.holder(str(tmp_path)) is None
    assert workdir_lock.acquire(str(tmp_path), "new") is True
    workdir_lock.release(str(tmp_path))
  # Created but never written (killed in between): stale.
  open(workdir_lock.lock_path(str(tmp_path)), "w").close()
  assert workdir_lock.acquire(str(tmp_path), "new") is True
  workdir_lock.release(str(tmp_path))
  # Another host: its liveness cannot be checked here, so it counts as held.
  _write_lock(tmp_path, pid=1, host="elsewhere.invalid", start_ticks=5, what="training")
  with pytest.raises(workdir_lock.WorkdirBusyError, match=r"host elsewhere.invalid.*delete"):
    workdir_lock.acquire(str(tmp_path), "training")
  workdir_lock.release(str(tmp_path))  # not ours: left alone
  assert os.path.exists(workdir_lock.lock_path(str(tmp_path)))


def test_two_takeovers_of_one_stale_lock_leave_one_holder(tmp_path, monkeypatch):
  """B finds a dead process's lock; before B removes it, A takes it over and holds it. B
  must then find A, not remove A's fresh lock and take the directory too."""
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  me = workdir_lock._me()  # pylint: disable=protected-access
  _write_lock(tmp_path, pid=int(dead.stdout), host=me["host"], start_ticks=1, what="dead")
  real_remove = workdir_lock._remove_if_unchanged  # pylint: disable=protected-access
  other = []

  def a_takes_over_first(path, stale):
    if not other:
      other.append(_holder_process(tmp_path))  # A: takes over the stale lock, holds it
    real_remove(path, stale)

  monkeypatch.setattr(workdir_lock, "_remove_if_unchanged", a_takes_over_first)
  try:
    with pytest.raises(workdir_lock.WorkdirBusyError, match="in use: a test holder, pid"):
      workdir_lock.acquire(str(tmp_path), "B")
    assert workdir_lock.holder(str(tmp_path))["pid"] == other[0].pid
  finally:
    for proc in other:
      proc.kill()
      proc.wait()


def test_nested_holds_pass_and_only_the_outer_releases(tmp_path):
  path = workdir_lock.lock_path(str(tmp_path))
  with workdir_lock.hold(str(tmp_path), "outer"):
    with workdir_lock.hold(str(tmp_path), "inner"):
      assert json.load(open(path))["what"] == "outer"
    assert os.path.exists(path)
  assert not os.path.exists(path)
  with pytest.raises(KeyError):  # released on an exception too
    with workdir_lock.hold(str(tmp_path), "outer"):
      raise KeyError("boom")
  assert not os.path.exists(path)


def test_run_experiment_and_main_refuse_a_busy_workdir(tmp_path):
  _write_lock(tmp_path, pid=1, host="elsewhere.invalid", start_ticks=5, what="training")
  config = default.get_config(f"runlocal,data_dir={tmp_path / 'data'}")
  with pytest.raises(workdir_lock.WorkdirBusyError, match="elsewhere.invalid"):
    run.run_experiment(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == [workdir_lock.LOCK_FILE]  # nothing was written
  out = subprocess.run([sys.executable, "main.py",
                        f"--config=configs/default.py:runlocal,data_dir={tmp_path / 'data'}",
                        f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 1, out.stderr[-2000:]
  assert "WorkdirBusyError" in out.stderr and "elsewhere.invalid" in out.stderr
  assert "Traceback" not in out.stderr


def test_the_suite_leaves_a_run_in_use_elsewhere_to_its_holder(tmp_path):
  from cmah_jax.experiments import plan as plan_lib  # pylint: disable=import-outside-toplevel
  from cmah_jax.experiments.suites import get_suite  # pylint: disable=import-outside-toplevel
  arg = f"runlocal,data_dir={tmp_path / 'data'}"
  root = tmp_path / "suite"
  (run_,) = plan_lib.plan(get_suite("smoke"), default.get_config(arg), str(root), seeds=[0],
                          methods=["random"])
  _write_lock(run_.workdir, pid=1, host="elsewhere.invalid", start_ticks=5, what="training")
  assert " running (pid 1) " in plan_lib.describe([run_])[0]
  cmd = [sys.executable, "-m", "cmah_jax.experiments", "--suite=smoke",
         f"--config=configs/default.py:{arg}", f"--workdir={root}", "--seeds=1",
         "--methods=random"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert ("skipping random 16 bits seed 0: in use by training, pid 1 on host "
          "elsewhere.invalid") in out.stdout
  assert "0 finished, 0 to run, 1 running elsewhere" in out.stdout
  assert not run_.finished()
  assert "No run has finished yet." in (root / "results.md").read_text()
  os.remove(workdir_lock.lock_path(run_.workdir))  # its holder is done (here: gone)
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "0 finished, 1 to run" in again.stdout, again.stdout[-2000:]
  assert run_.finished() and not os.path.exists(workdir_lock.lock_path(run_.workdir))


_TWO_PROCESSES = """
import os, sys
import jax
pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid)
from cmah_jax import workdir_lock
try:
  with workdir_lock.hold(workdir, "a two-process test"):
    print("held", flush=True)
except Exception as e:
  print(f"{type(e).__name__}: {e}", flush=True)
  jax.distributed.shutdown()
  sys.exit(3)
jax.distributed.shutdown()
"""


def test_a_failure_on_process_0_stops_every_process(tmp_path):
  """Process 0 alone takes the lock; an error there other than a busy workdir (here the
  lock's name is a directory) must reach process 1 too, not leave it at the barrier."""
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
  os.makedirs(workdir_lock.lock_path(str(tmp_path / "run")))  # not a file: cannot be taken
  script = tmp_path / "worker.py"
  script.write_text(_TWO_PROCESSES)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path / "run")],
                            env=env, stdout=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=240)[0] for p in procs]
  assert [p.returncode for p in procs] == [3, 3], outs
  assert "IsADirectoryError" in outs[0]
  assert "WorkdirBusyError: process 0 failed while taking the lock of" in outs[1], outs[1]


def test_a_holder_in_another_pid_namespace_counts_as_held(tmp_path):
  """Two containers sharing a host name (`--network host`) do not see each other's pids: a
  lock from the other one must not look stale because its pid is not found here."""
  if not os.path.exists("/proc/self/ns/pid"):
    pytest.skip("no /proc/self/ns/pid here")
  me = dict(host=socket.gethostname(), pid_ns=os.readlink("/proc/self/ns/pid"))
  dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True).stdout)
  lock = dict(pid=dead, host=me["host"], start_ticks=5, what="training")
  _write_lock(tmp_path, **lock, pid_ns="pid:[1]")  # no namespace has inode 1: not ours
  assert workdir_lock.holder(str(tmp_path))["pid"] == dead
  with pytest.raises(workdir_lock.WorkdirBusyError, match=r"another container's pid namespace"):
    workdir_lock.acquire(str(tmp_path), "training")
  # The same dead pid in this namespace, or in a lock written before namespaces were
  # recorded: stale, taken over.
  for content in (dict(lock, pid_ns=me["pid_ns"]), lock):
    _write_lock(tmp_path, **content)
    assert workdir_lock.holder(str(tmp_path)) is None
    assert workdir_lock.acquire(str(tmp_path), "training") is True
    assert workdir_lock.holder(str(tmp_path))["pid_ns"] == me["pid_ns"]
    workdir_lock.release(str(tmp_path))
