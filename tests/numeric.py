"""Reference derivatives for the tests: central differences, one coordinate at a time."""
import numpy as np


def central_difference_gradient(f, x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
  """d f / d x of a scalar function of an array, `(f(x + eps e) - f(x - eps e)) / 2 eps`
  for every coordinate e; `f` takes and is called with float32 NumPy arrays."""
  x = np.asarray(x, np.float32)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[idx] = eps
    grad[idx] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
  return grad
