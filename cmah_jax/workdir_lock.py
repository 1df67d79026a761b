"""One writer per run directory: a lock file that says which process is using it.

Two processes training into one workdir would interleave checkpoints, `metrics.jsonl` and
the report (a second `main.py` on the same `--workdir`, or two suites sharing a root). Every
writer of a run directory holds `<workdir>/.cmah.lock` while it works:

  with workdir_lock.hold(workdir, "training"):
    ...

The file (JSON: pid, host, the process's start time, what it does, since when) is written
whole under a temporary name and hard-linked into place (`link` fails if the name exists),
so of two processes racing for it exactly one wins and no one ever reads it half-written. A
lock left by a process that no longer runs (killed with SIGKILL, the machine rebooted) is
stale and taken over: it is removed only under an `flock` on `<lock>.takeover` and only if
it still holds the stale content, so two processes taking over one stale lock cannot
remove the fresh lock one of them has just made (the kernel drops an `flock` when its
process dies). A live holder makes `hold` raise `WorkdirBusyError` naming it. Liveness is
known only where the holder's pid means the same process: on its own host and in its own
pid namespace (containers sharing a host name, e.g. `docker run --network host`, each have
one); there its pid and start time are checked, so a reused pid is not mistaken for it. A
lock from another host or pid namespace counts as held, and the error says how to remove it.

Nested `hold`s by the process that holds the lock (a suite worker around `run_experiment`)
pass through. In a multi-process run only process 0 takes the lock, and every process
raises if it could not.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from typing import Iterator

LOCK_FILE = ".cmah.lock"


class WorkdirBusyError(RuntimeError):
  """The run directory is in use by another live process (named in the message)."""


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), LOCK_FILE)


def _start_ticks(pid: int) -> int | None:
  """The process's start time in clock ticks since boot (Linux `/proc/<pid>/stat` field
  22), or None where there is no /proc or no such process."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      stat = f.read().decode(errors="replace")
  except OSError:
    return None
  # The command name (field 2) is in parentheses and may contain spaces: split after it.
  fields = stat[stat.rfind(")") + 2:].split()
  try:
    return int(fields[19])
  except (IndexError, ValueError):
    return None


def _pid_namespace() -> str | None:
  """This process's pid namespace (Linux: `"pid:[4026531836]"`), or None without /proc."""
  try:
    return os.readlink("/proc/self/ns/pid")
  except OSError:
    return None


def _me() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "pid_ns": _pid_namespace(),
          "start_ticks": _start_ticks(os.getpid())}


def _is_me(owner: dict) -> bool:
  me = _me()
  return all(owner.get(k) == me[k] for k in ("pid", "host", "pid_ns", "start_ticks"))


def _checkable_here(owner: dict) -> bool:
  """Whether the holder's pid can be looked up here: same host and same pid namespace (a
  lock written before namespaces were recorded has none: read as this one)."""
  here = _pid_namespace()
  return owner.get("host") == socket.gethostname() and owner.get("pid_ns", here) == here


def _alive(owner: dict) -> bool:
  """Whether the lock's holder still runs (True when that cannot be known: another host or
  pid namespace)."""
  if not _checkable_here(owner):
    return True
  pid = owner.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by another user
  ticks = _start_ticks(pid)
  return ticks is None or owner.get("start_ticks") in (None, ticks)


def _read(path: str) -> dict | None:
  """The lock's content; None if absent; {} if unreadable (being written, or damaged)."""
  try:
    with open(path) as f:
      content = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  return content if isinstance(content, dict) else {}


def holder(workdir: str) -> dict | None:
  """The live process holding `workdir`'s lock ({"pid", "host", "what", "since", ...}),
  or None when the directory is free (no lock, or a stale one)."""
  owner = _read(lock_path(workdir))
  return owner if owner and _alive(owner) else None


def describe_holder(owner: dict) -> str:
  """`"training, pid 123 on host h since 2026-12-03 14:00:00 UTC"`."""
  since = owner.get("since")
  when = (time.strftime(" since %Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
          if isinstance(since, (int, float)) else "")
  return f"{owner.get('what', '?')}, pid {owner.get('pid')} on host {owner.get('host')}{when}"


def _busy(path: str, owner: dict) -> WorkdirBusyError:
  hint = (" If that process is gone (it ran on another host or in another container's pid "
          f"namespace, so this process cannot check), delete {path}."
          if not _checkable_here(owner) else
          " Wait for it to finish, or stop it (it saves a checkpoint on SIGTERM) and run "
          "again to resume.")
  return WorkdirBusyError(f"{os.path.dirname(path)} is in use: {describe_holder(owner)} "
                          f"(lock file {path}).{hint}")


def acquire(workdir: str, what: str) -> bool:
  """Take `workdir`'s lock for this process.

  Returns:
    True if taken now; False if this process already held it (nothing to release).
  Raises:
    WorkdirBusyError: another live process holds it.
  """
  path = lock_path(workdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  content = dict(_me(), what=what, since=time.time())
  for _ in range(20):
    if _create(path, content):
      return True
    owner = _read(path)
    if owner is None:
      continue  # released in between: try again
    if owner and _is_me(owner):
      return False
    if owner and _alive(owner):
      raise _busy(path, owner)
    _remove_if_unchanged(path, owner)  # stale (or empty: damaged), then try again
  raise WorkdirBusyError(f"could not take the lock {path}: it kept changing hands")


def _create(path: str, content: dict) -> bool:
  """Create the lock file at `path` holding `content`, complete from the first moment it
  exists; False if the name is taken."""
  tmp = f"{path}.new-{uuid.uuid4().hex[:8]}"
  with open(tmp, "w") as f:
    json.dump(content, f)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def _remove_if_unchanged(path: str, stale: dict) -> None:
  """Remove the lock file if it still holds `stale` (a dead holder's content), under an
  exclusive `flock` of `<path>.takeover`: of processes taking over one stale lock, the
  first removes it and the others find it gone or replaced by a live holder's."""
  guard = os.open(f"{path}.takeover", os.O_CREAT | os.O_RDWR, 0o644)
  try:
    fcntl.flock(guard, fcntl.LOCK_EX)
    if _read(path) == stale:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
  finally:
    os.close(guard)  # and with it the flock


def release(workdir: str) -> None:
  """Remove `workdir`'s lock if this process holds it (someone else's is left alone)."""
  path = lock_path(workdir)
  owner = _read(path)
  if owner and _is_me(owner):
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def hold(workdir: str, what: str) -> Iterator[None]:
  """Hold `workdir`'s lock for the block (see the module docstring); multi-process: process
  0 holds it and all processes raise if it could not be taken."""
  import jax  # pylint: disable=import-outside-toplevel

  from cmah_jax import multihost  # pylint: disable=import-outside-toplevel

  taken, error = False, None
  if jax.process_index() == 0:
    try:
      taken = acquire(workdir, what)
    except Exception as e:  # pylint: disable=broad-except  (raised below, on every process)
      error = e
  multihost.raise_if_any_failed(error, f"taking the lock of {workdir}", WorkdirBusyError)
  try:
    yield
  finally:
    if taken:
      release(workdir)
