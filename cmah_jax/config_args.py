"""Parse the compact `key=value,...` argument of a config file's `get_config(arg)`.

`configs/default.py:bits=32,runlocal` -> `{"bits": 32, "runlocal": True}`. Each value is
read as its argument's type: the type of its default, or `types[key]` where the default is
None. A bool takes a bare key (True), true/false, yes/no, on/off or 1/0; an int an integer
literal; a float any number; a string the text as given. `none` sets an argument whose
default is None back to None. Unknown keys and values of the wrong type are errors naming
the key, the value and what it takes.
"""
from __future__ import annotations

import ast
from typing import Any, Mapping

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _typed(key: str, text: str, kind: type, arg: str):
  def bad(expected: str):
    return ValueError(f"Config argument {key}={text!r} in {arg!r}: {key} takes {expected}")

  if kind is bool:
    word = text.lower()
    if word in _TRUE or word in _FALSE:
      return word in _TRUE
    raise bad("true or false (or a bare key for true)")
  if kind is str:
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = None
  if kind is int and isinstance(value, int) and not isinstance(value, bool):
    return value
  if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  raise bad("an integer" if kind is int else "a number")


def parse_config_arg(arg: str | None, defaults: Mapping[str, Any],
                     types: Mapping[str, type] | None = None) -> dict[str, Any]:
  """`"a=1,b,c=x"` -> defaults updated with `{"a": 1, "b": True, "c": "x"}`.

  Args:
    arg: the text after `configs/<file>.py:`, or None.
    defaults: every argument and its default.
    types: the type of each argument whose default is None, or whose default's type is
      narrower than it takes (an int default that takes floats).
  Raises:
    ValueError: an unknown key, or a value its argument does not take.
  """
  out = dict(defaults)
  if not arg:
    return out
  types = types or {}
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if key not in out:
      raise ValueError(
          f"Unknown config argument {key!r} in {arg!r}; valid: {sorted(out)}")
    kind = types.get(key, type(defaults[key]) if defaults[key] is not None else None)
    if not sep:
      if kind not in (bool, None):
        raise ValueError(f"Config argument {key!r} in {arg!r} needs a value ({key}=...)")
      out[key] = True
      continue
    if defaults[key] is None and value.lower() == "none":
      out[key] = None
    elif kind is None:  # no declared type: a Python literal, else the text
      try:
        out[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        out[key] = value
    else:
      out[key] = _typed(key, value, kind, arg)
  return out
