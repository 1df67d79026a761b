"""Mixed precision (`ModelConfig.dtype`): bfloat16 / float16 compute with float32 params.

What must hold for the accelerator path: parameters, gradients and optimizer state stay
float32; codes, reconstruction outputs and losses are float32; a train step's loss in
bfloat16 is close to float32's (same params, batch and keys); the `base` model traces and
lowers in bfloat16 with its matmuls in bfloat16.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmah_jax import losses
from cmah_jax.config import OptimSpec
from cmah_jax.models import CMAH, abstract_variables, build, resolve_config
from cmah_jax.objectives import get_objective
from cmah_jax.optim import make_optimizer
from cmah_jax.train import make_train_step

BITS = 16
B = 8
# |loss(half) - loss(fp32)| / |loss(fp32)| per loss term, tiny model, two steps. Measured
# (jax 0.10.2, CPU): at most 2.6e-3 for bfloat16 (8 mantissa bits: ~4e-3 per rounding) and
# 1.3e-4 for float16; the bounds leave 4x and 8x margin.
REL_TOL = {"bfloat16": 1e-2, "float16": 1e-3}


def _batch(model, b=B, seed=0):
  rng = np.random.default_rng(seed)
  pts = rng.normal(size=(b, model.config.num_points, 3))
  pts /= np.linalg.norm(pts, axis=-1, keepdims=True)
  s = model.config.image_size
  return {"points": jnp.asarray(pts, jnp.float32),
          "images": jnp.asarray(rng.normal(size=(b, s, s, 3)), jnp.float32),
          "label": jnp.arange(b, dtype=jnp.int32), "index": jnp.arange(b, dtype=jnp.int32)}


def _steps(dtype: str, num_steps: int = 2):
  """`num_steps` train steps of the tiny model in `dtype` (same init, batch, keys for every
  dtype). Returns (per-step metrics, final state)."""
  model, variables = build("tiny", BITS, jax.random.key(0), dtype=dtype)
  tx, schedule = make_optimizer(OptimSpec(warmup_steps=1), B, 10)
  objective = get_objective(losses.LossSpec(), BITS)
  step = jax.jit(make_train_step(model, tx, schedule, objective, jax.random.key(1)))
  params = variables["params"]
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  batch, metrics = _batch(model), []
  for _ in range(num_steps):
    state, m = step(state, batch)
    metrics.append(jax.device_get(m))
  return metrics, state


@pytest.fixture(scope="module")
def fp32_run():
  return _steps("float32")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_train_step_close_to_fp32(fp32_run, dtype):
  ref, _ = fp32_run
  got, state = _steps(dtype)
  for m_ref, m in zip(ref, got, strict=True):  # step 1 (same params), step 2 (one update)
    for key in ("loss/total", "loss/contrastive", "loss/point_recon", "loss/image_recon"):
      assert np.isfinite(m[key])
      assert abs(m[key] - m_ref[key]) <= REL_TOL[dtype] * abs(m_ref[key]), (key, m, m_ref)
  # ... and not equal: the half type is used (a dtype silently ignored would give 0).
  assert got[0]["loss/total"] != ref[0]["loss/total"]
  # Params, optimizer state and the gradient norm stay float32.
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.float32)}
  float_leaves = [x for x in jax.tree.leaves(state["opt_state"])
                  if jnp.issubdtype(x.dtype, jnp.floating)]
  assert {x.dtype for x in float_leaves} == {jnp.dtype(jnp.float32)}
  assert got[0]["grad_norm"].dtype == np.float32


def test_bf16_outputs_float32_and_compute_bf16():
  model, variables = build("tiny", BITS, jax.random.key(0), dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  batch = _batch(model, b=4)

  def fwd(variables, images, points):
    return model.apply(variables, images, points, train=True, mask_key=jax.random.key(1),
                       rngs={"dropout": jax.random.key(2)})

  out = jax.jit(fwd)(variables, batch["images"], batch["points"])
  for key, value in out.items():
    if not key.endswith("/mask"):
      assert value.dtype == jnp.float32, key
  for tower in ("point", "image"):
    assert set(np.unique(np.asarray(out[f"{tower}/code"]))) <= {-1.0, 1.0}
    # h is computed in float32 after the bf16 projection: not limited to bf16's 8 bits.
    h = np.asarray(out[f"{tower}/h"])
    assert np.any(h != h.astype(jnp.bfloat16).astype(np.float32))
  # The heavy ops run in bfloat16: every dot of the encoders/decoders has bf16 operands.
  hlo = jax.jit(fwd).lower(variables, batch["images"], batch["points"]).as_text()
  dots = re.findall(r"stablehlo\.dot_general %\S+, %\S+.*?: \(tensor<([^>]*)>", hlo)
  assert dots and sum("bf16" in d for d in dots) >= 0.9 * len(dots), dots


def test_base_bf16_traces_with_float32_params_and_grads():
  """Paper-scale `base` in bfloat16: shapes only (`eval_shape`), no compilation."""
  model = CMAH(resolve_config("base", 64, {"dtype": "bfloat16"}))
  params = abstract_variables(model)["params"]
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  c = model.config
  images = jax.ShapeDtypeStruct((2, c.image_size, c.image_size, 3), jnp.float32)
  points = jax.ShapeDtypeStruct((2, c.num_points, 3), jnp.float32)

  def loss_fn(params, images, points):
    out = model.apply({"params": params}, images, points, train=True,
                      mask_key=jax.random.key(0), rngs={"dropout": jax.random.key(1)})
    return losses.cmah_loss(out, losses.LossSpec())[0]

  loss, grads = jax.eval_shape(jax.value_and_grad(loss_fn), params, images, points)
  assert loss.shape == () and loss.dtype == jnp.float32
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
