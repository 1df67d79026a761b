"""Background prefetch: a bounded queue filled by one worker thread."""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable


class _Failure:

  def __init__(self, exc: BaseException):
    self.exc = exc


_END = object()


class BatchIterator:
  """Iterates `finish(produce(i))` for i in `steps`; `produce` runs `depth` items ahead in
  a thread, `finish` in the consumer's thread.

  `depth=0` computes synchronously. An exception in the worker is re-raised by `next()`.
  Stop the thread with `close()` or by using the iterator as a context manager. Keep JAX
  calls in `finish`: with several processes, JAX computations dispatched from two threads
  could run their cross-process collectives in different orders on different hosts.
  """

  def __init__(self, produce: Callable[[int], Any], steps: Iterable[int], depth: int,
               finish: Callable[[Any], Any] | None = None):
    self._produce = produce
    self._finish = finish or (lambda item: item)
    self._steps = iter(steps)
    self._depth = int(depth)
    self._closed = False
    self._stop = threading.Event()
    self._thread = None
    if self._depth > 0:
      self._queue = queue.Queue(maxsize=self._depth)
      self._thread = threading.Thread(target=self._work, daemon=True,
                                      name="cmah-input-prefetch")
      self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _work(self):
    try:
      for i in self._steps:
        if self._stop.is_set() or not self._put(self._produce(i)):
          return
      self._put(_END)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised in the consumer)
      self._put(_Failure(e))

  def __iter__(self):
    return self

  def __next__(self):
    if self._closed:
      raise StopIteration
    if self._thread is None:
      try:
        i = next(self._steps)
      except StopIteration:
        self._closed = True
        raise
      return self._finish(self._produce(i))
    item = self._queue.get()
    if item is _END:
      self.close()
      raise StopIteration
    if isinstance(item, _Failure):
      self.close()
      raise item.exc
    return self._finish(item)

  def close(self):
    """Stops the worker thread (waits for the batch in progress) and drops queued batches."""
    self._closed = True
    self._stop.set()
    if self._thread is not None:
      while self._thread.is_alive():
        try:
          self._queue.get(timeout=0.05)
        except queue.Empty:
          pass
      self._thread.join()
      self._thread = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
