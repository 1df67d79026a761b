"""Parse the compact `key=value,...` argument of a config file's `get_config(arg)`.

`configs/default.py:bits=32,runlocal` -> `{"bits": 32, "runlocal": True}`. Values are
parsed as Python literals where possible (ints, floats, bools, None), else kept as strings.
A bare key means True. Unknown keys are an error naming the key and the valid ones.
"""
from __future__ import annotations

import ast
from typing import Any, Mapping


def parse_config_arg(arg: str | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
  """`"a=1,b,c=x"` -> defaults updated with `{"a": 1, "b": True, "c": "x"}`."""
  out = dict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in out:
      raise ValueError(
          f"Unknown config argument {key!r} in {arg!r}; valid: {sorted(out)}")
    if not sep:
      out[key] = True
      continue
    try:
      out[key] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key] = value.strip()
  return out
