"""One jitted function per static signature, so runs that differ only in their data, seed or
step count's bookkeeping (the rounds of a self-training job, a sweep's seeds in one process)
reuse it: jax.jit then compiles once per shape, not once per run.

jax.jit's own cache is keyed by the function object, and each run binds its static pieces
(model, loss, optimizer) into a new functools.partial, so without this every run recompiled.
"""
import collections
import json

from selffb.cpu import xla_flags

_MAX_ENTRIES = 16  # A sweep or a test session builds many setups; old entries are dropped.
_CACHE = collections.OrderedDict()


def signature(s):
  """What Setup `s`'s compiled init, train and eval steps depend on beyond their arguments'
  shapes: the model, the task's loss, the feedback spec, the optimizer (its schedule is baked
  in), the mesh and the XLA options."""
  c = s.config  # The model is its frozen config; the optimizer is rebuilt from these keys.
  keys = {'optim': c.optim.to_dict(), 'num_steps': c.train.num_steps,
          'accum': c.train.grad_accum_steps, 'rules': c.mesh.rules.to_dict(),
          'xla': xla_flags.for_mesh(c, s.mesh)}
  return (s.model.__name__, s.model_cfg, s.task.__name__, s.fb, s.mesh,
          json.dumps(keys, sort_keys=True, default=str))


def cached(kind, s, build):
  """`build()`'s result for (kind, signature(s)), built once."""
  key = (kind, signature(s))
  if key in _CACHE:
    _CACHE.move_to_end(key)
  else:
    _CACHE[key] = build()
    if len(_CACHE) > _MAX_ENTRIES:
      _CACHE.popitem(last=False)
  return _CACHE[key]
