"""Test set-up: 4 fake CPU devices and a persistent compilation cache.

XLA_FLAGS must be set before JAX initialises its backends, so this runs at import time of
the test session. Single-device tests are unaffected (un-sharded arrays live on device 0);
multi-device tests build a mesh over 2 or 4 of these devices.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402  (after XLA_FLAGS)

_CACHE = pathlib.Path(os.environ.get(
    "CMAH_TEST_COMPILE_CACHE",
    pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax_tests"))
_CACHE.mkdir(parents=True, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
