"""Silence the printouts that Orbax (0.12) leaves behind after a failed checkpoint read.

When one array of a damaged step cannot be read, `checkpointing.restore_latest` reports the
step once, with TensorStore's reason, and moves on. Orbax's other reads of that step are
abandoned mid-flight, and Python prints each leftover later, at garbage collection, as tens
of lines of TensorStore spec and traceback:

  1. "Exception ignored in: <coroutine _read_array_index_and_device_put>": a suspended
     read, closed by the collector, turns `GeneratorExit` into Orbax's `Exception(
     "Encountered error while reading array index ...")` (it catches `BaseException`);
  2. "Task exception was never retrieved" (logger `asyncio`) for the `async_deserialize`
     task of another array that failed the same way, and "Future exception was never
     retrieved" for TensorStore's own read of it ("Error reading ... in OCDBT database";
     dropped only once a read has failed in this process);
  3. "Exception ignored in: None ... RuntimeError: Event loop is closed": a TensorStore
     callback arriving after Orbax closed its event loop (dropped only once a read has
     failed, since its shape is not specific to Orbax).

`install()` puts a filter in front of `sys.unraisablehook` and on the `asyncio` logger;
everything that is not one of these leftovers goes on to the previous hook / handlers.
"""
from __future__ import annotations

import logging
import re
import sys

READ_COROUTINE = "_read_array_index_and_device_put"   # orbax serialization.py
READ_TASK_COROUTINE = "async_deserialize"              # orbax serialization.py
READ_ERROR_PREFIX = "Encountered error while reading array index"
LOOP_CLOSED = "Event loop is closed"                  # asyncio base_events._check_closed
# asyncio names a task's coroutine by its qualified name: "coro=<async_deserialize() ...".
_TASK_OF_READ = re.compile(r"coro=<(?:[\w<>]+\.)*" + READ_TASK_COROUTINE + r"\(\)")
# TensorStore's error for a damaged array, e.g. 'OUT_OF_RANGE: Error reading "params.w/0.0"
# in OCDBT database at local file ...'.
_TENSORSTORE_READ_ERROR = re.compile(r"[A-Z_]+: Error reading .* in OCDBT database")


class FailedReadLeftovers:
  """`sys.unraisablehook` and `logging.Filter` in one: an unraisable exception
  (`drops_unraisable`) or an `asyncio` log record (`filter`) that is a leftover of a failed
  Orbax read is dropped; anything else goes on.

  Attributes:
    previous: the unraisable hook this one replaced; everything kept goes there.
    read_failed: set by `expect_failed_read_leftovers()` once a read has failed.
  """

  def __init__(self, previous):
    self.previous = previous
    self.read_failed = False

  def drops_unraisable(self, unraisable) -> bool:
    """`unraisable`: `sys.UnraisableHookArgs` (exc_value, object, ...)."""
    error = unraisable.exc_value
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and code.co_name == READ_COROUTINE:
      return str(error).startswith(READ_ERROR_PREFIX)
    if self.read_failed and unraisable.object is None:
      return (isinstance(error, RuntimeError) and str(error) == LOOP_CLOSED
              and _raised_in_asyncio(unraisable.exc_traceback))
    return False

  def __call__(self, unraisable) -> None:
    try:
      if self.drops_unraisable(unraisable):
        return
    except Exception:  # pylint: disable=broad-except  (never lose the original report)
      pass
    self.previous(unraisable)

  def filter(self, record: logging.LogRecord) -> bool:
    """`logging.Filter` for the `asyncio` logger: False drops `record`."""
    try:
      error = record.exc_info[1] if record.exc_info else None
      message = str(record.msg)
      task_of_read = (message.startswith("Task exception was never retrieved")
                      and _TASK_OF_READ.search(record.getMessage()) is not None
                      and str(error).startswith(READ_ERROR_PREFIX))
      tensorstore_read = (self.read_failed
                          and message.startswith("Future exception was never retrieved")
                          and _TENSORSTORE_READ_ERROR.match(str(error)) is not None)
      return not (task_of_read or tensorstore_read)
    except Exception:  # pylint: disable=broad-except  (never lose the original record)
      return True


def _raised_in_asyncio(traceback) -> bool:
  """Whether the innermost frame of `traceback` is in the `asyncio` package."""
  frame_file = None
  while traceback is not None:
    frame_file = traceback.tb_frame.f_code.co_filename
    traceback = traceback.tb_next
  return frame_file is not None and "asyncio" in frame_file.replace("\\", "/").split("/")


def install() -> FailedReadLeftovers:
  """Put the filter in front of the current `sys.unraisablehook` and on the `asyncio`
  logger (idempotent: at most one of each); returns it."""
  hook = sys.unraisablehook
  if not isinstance(hook, FailedReadLeftovers):
    hook = FailedReadLeftovers(hook)
    sys.unraisablehook = hook
  asyncio_logger = logging.getLogger("asyncio")
  for existing in list(asyncio_logger.filters):
    if isinstance(existing, FailedReadLeftovers):
      asyncio_logger.removeFilter(existing)
  asyncio_logger.addFilter(hook)
  return hook


def expect_failed_read_leftovers() -> None:
  """Note that a read failed in this process: from now on TensorStore's never-retrieved
  read errors and a closed event loop's callback error (raised inside asyncio, with no
  object) count as its leftovers too."""
  install().read_failed = True
