"""The train state: created by a jitted init straight into its shardings, and restored from
checkpoints the same way, so a large model is never materialised on one device first."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from selffb import checkpoint
from selffb import sharding
from selffb.train import compiled


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _boxed_init(s, seq_len):
  """init(rng) -> the TrainState with parameters still boxed with their logical axis names."""
  module = s.module()

  def init(rng):
    params = module.init(rng, *s.model.example_inputs(s.model_cfg, seq_len))['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params))

  return init


def init_state(s, rng):
  """(state, shardings): parameters and their optimizer moments sharded by the logical-axis
  rules. The parameters do not depend on the example's length, so the jitted init takes a
  one-token example and is built once per static signature (train/compiled.py)."""

  def build():
    boxed_init = _boxed_init(s, 1)
    shardings = sharding.state_shardings(jax.eval_shape(boxed_init, rng), s.mesh,
                                         sharding.logical_rules(s.config.mesh))
    return jax.jit(lambda rng: nn.unbox(boxed_init(rng)), out_shardings=shardings), shardings

  init, shardings = compiled.cached('init', s, build)
  return init(rng), shardings


def abstract_params(s):
  """The parameters' shapes, dtypes and shardings, for restoring without initialising."""
  boxed = jax.eval_shape(_boxed_init(s, 1), jax.random.key(0)).params
  shardings = sharding.state_shardings(boxed, s.mesh, sharding.logical_rules(s.config.mesh))
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                      nn.unbox(boxed), shardings)


def restore_best_params(s, workdir):
  """(step, best params, loop state) of workdir's newest checkpoint, restored straight into the
  shardings the logical-axis rules give them; only the parameters are read."""
  restored = checkpoint.restore_params(
      checkpoint.make_manager(workdir, s.config.train.max_checkpoints), abstract_params(s))
  if restored is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/checkpoints; train first with '
                            f'--mode=train --workdir={workdir}.')
  return restored
