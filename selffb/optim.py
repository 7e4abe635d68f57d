"""The Optax chain: clip -> Adam -> decoupled weight decay -> schedule, with scale_by_feedback
before Adam (`feedback_scale_at='gradients'`) or right after it (`'updates'`)."""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

FEEDBACK_MODES = ('none', 'relative')
FEEDBACK_PLACES = ('gradients', 'updates')
SCHEDULES = ('constant', 'warmup_cosine', 'warmup_rsqrt', 'wsd')
FREEZE = ('none', 'head_only', 'top_k', 'embeddings')


class ScaleByFeedbackState(NamedTuple):
  ema: jax.Array  # Running mean of the batch hardness 1 - F, before bias correction.
  ratio_ema: jax.Array  # Running mean of r - 1 (r: see scale_by_feedback), likewise.
  count: jax.Array  # Updates seen, for the EMAs' bias correction.
  scale: jax.Array  # The last scale applied (for metrics).


def _debiased(ema, count, decay):
  return ema / (1 - decay ** count.astype(jnp.float32))


def relative_scale(feedback, state, decay, min_scale, max_scale, floor):
  """(scale, state after the batch) of mode 'relative'; see scale_by_feedback."""
  count = state.count + 1
  hardness = 1 - feedback
  ema = decay * state.ema + (1 - decay) * hardness
  ratio = (hardness + floor) / (_debiased(ema, count, decay) + floor)
  ratio_ema = decay * state.ratio_ema + (1 - decay) * (ratio - 1)
  normalised = ratio / (1 + _debiased(ratio_ema, count, decay))
  # The first batch has nothing to compare with; r / EMA(r) is 1 there up to rounding.
  scale = jnp.where(count == 1, 1.0, jnp.clip(normalised, min_scale, max_scale))
  return scale, ScaleByFeedbackState(ema=ema, ratio_ema=ratio_ema, count=count, scale=scale)


def scale_by_feedback(mode='relative', decay=0.99, min_scale=0.5, max_scale=2.0, floor=1e-3):
  """Scales updates by a function of the batch's fused feedback `F_batch` (an extra arg).

  mode 'relative': s = clip(r / EMA(r), min_scale, max_scale), r = (1 - F_batch + floor) /
  (EMA(1 - F) + floor): r is how much harder the batch is than the run's recent batches, and s is
  r against its own running mean. Both EMAs (decay `decay`) include the current batch and are
  bias-corrected; the first step has s = 1 exactly. `floor` > 0 is the hardness every batch has
  on top of 1 - F, so r is defined at F = 1 (a learned task rounds to it in float32): a run of
  batches at F = 1 gives r = floor / floor = 1. Batches harder than usual move the weights more,
  and the long-run mean of s stays near 1: while F trends (it rises as the model learns) EMA(1 -
  F) lags and r stays below 1 as long as the trend lasts, but a steady r gives s = 1 (exactly
  for F = 1, whose EMAs of 1 - F and r - 1 are exactly 0; to rounding otherwise), and s departs
  from 1 only by the change of r within the EMA's horizon of about 1 / (1 - decay) steps, not by
  r's offset from 1.
  mode 'none': s = 1 (the EMAs are still tracked, so the state is the same).
  """
  if mode not in FEEDBACK_MODES:
    raise ValueError(f'config.optim.feedback_scale={mode!r}; choose one of {FEEDBACK_MODES}.')
  if not 0 < min_scale <= 1 <= max_scale:
    raise ValueError(f'feedback scale range [{min_scale}, {max_scale}] must contain 1 and be > 0.')
  if not 0 <= decay < 1:
    raise ValueError(f'config.optim.feedback_ema={decay} must be in [0, 1).')
  if not 0 < floor < math.inf:
    raise ValueError(f'config.optim.feedback_floor={floor} must be > 0 and finite.')

  def init_fn(params):
    del params
    zero = jnp.zeros([], jnp.float32)
    return ScaleByFeedbackState(ema=zero, ratio_ema=zero, count=jnp.zeros([], jnp.int32),
                                scale=jnp.ones([], jnp.float32))

  def update_fn(updates, state, params=None, *, feedback=None, **extra_args):
    del params, extra_args
    if feedback is None:
      raise ValueError('scale_by_feedback needs the batch feedback: tx.update(..., feedback=F).')
    feedback = jnp.asarray(feedback, jnp.float32)
    scale, state = relative_scale(feedback, state, decay, min_scale, max_scale, floor)
    if mode == 'none':
      scale = jnp.ones([], jnp.float32)
      state = state._replace(scale=scale)
    updates = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_schedule(c, num_steps):
  """The learning-rate schedule named by `config.optim.schedule`."""
  if c.schedule not in SCHEDULES:
    raise ValueError(f'config.optim.schedule={c.schedule!r}; choose one of {SCHEDULES}.')
  lr, warmup, end = c.lr, c.warmup_steps, c.lr * c.final_lr_ratio
  if warmup >= num_steps and c.schedule != 'constant':
    raise ValueError(f'config.optim.warmup_steps={warmup} must be < train.num_steps={num_steps}.')
  ramp = optax.linear_schedule(0.0, lr, max(warmup, 1))
  if c.schedule == 'constant':
    return optax.constant_schedule(lr)
  if c.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, num_steps, end_value=end)
  if c.schedule == 'warmup_rsqrt':
    rsqrt = lambda step: lr * jnp.sqrt(max(warmup, 1) / jnp.maximum(step + max(warmup, 1), 1))
    return optax.join_schedules([ramp, rsqrt], [warmup])
  decay_steps = max(int(num_steps * c.decay_fraction), 1)
  stable_end = num_steps - decay_steps  # 'wsd': warmup, stable, linear decay.
  return optax.join_schedules(
      [ramp, optax.constant_schedule(lr), optax.linear_schedule(lr, end, decay_steps)],
      [warmup, stable_end])


def decay_mask(params):
  """Decay weight matrices only: norms' scales and biases (a per-head query bias has rank 2)
  are left alone."""
  def decays(path, p):
    name = getattr(path[-1], 'key', None) if path else None
    return p.ndim >= 2 and name not in ('bias', 'scale')  # Scanned layers stack scales.
  return jax.tree_util.tree_map_with_path(decays, params)


def check_feedback_place(place):
  if place not in FEEDBACK_PLACES:
    raise ValueError(f'config.optim.feedback_scale_at={place!r}; choose one of '
                     f'{FEEDBACK_PLACES}.')


def check_freeze(c, num_layers):
  if c.freeze not in FREEZE:
    raise ValueError(f'config.optim.freeze={c.freeze!r}; choose one of {FREEZE}.')
  if c.freeze == 'top_k' and not 1 <= c.top_k <= num_layers:
    raise ValueError(f"config.optim.freeze='top_k' trains the top config.optim.top_k={c.top_k} "
                     f'layers: use 1..{num_layers} (config.model.num_layers).')


def trainable(group, freeze, top_k, num_layers):
  """Whether a parameter group (a model kind's `param_group`: 'embeddings', a layer index,
  'head', 'final') trains under config.optim.freeze."""
  if freeze == 'embeddings':
    return group != 'embeddings'
  if freeze == 'head_only':
    return group == 'head'
  if freeze == 'top_k':
    return group in ('head', 'final') or (isinstance(group, int) and group >= num_layers - top_k)
  return True


def freeze_labels(c, param_group, num_layers):
  """params -> a tree of 'train' / 'frozen' by each parameter's top-level name."""
  def labels(params):
    return {name: jax.tree.map(lambda _, label=(
        'train' if trainable(param_group(name), c.freeze, c.top_k, num_layers) else 'frozen'):
                               label, sub) for name, sub in params.items()}
  return labels


def make_optimizer(c, num_steps, param_group=None, num_layers=0):
  """`config.optim` -> the chain; `tx.update(grads, state, params, feedback=F_batch)`.

  The feedback scale s multiplies the clipped gradients before Adam (`feedback_scale_at=
  'gradients'`), whose normalisation absorbs most of it, or Adam's update before weight decay
  and the learning rate (`'updates'`): the step is then -lr * (s * adam + wd * p). A step whose
  gradients are not finite is skipped whole (zero update, inner state kept); the training loop
  watches the streak (`nonfinite_streak`) and stops a run that keeps diverging.

  With `config.optim.freeze` the chain runs on the trainable parameters only (optax.partition):
  the frozen ones get a zero update and no state (no Adam moments); `param_group(name)` (the
  model kind's) groups the top-level parameter names.
  """
  clip = [optax.clip_by_global_norm(c.clip_norm)] if c.clip_norm > 0 else []
  feedback = scale_by_feedback(c.feedback_scale, c.feedback_ema, c.feedback_scale_min,
                               c.feedback_scale_max, c.feedback_floor)
  adam = optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps)
  decay = ([optax.add_decayed_weights(c.weight_decay, mask=decay_mask)]
           if c.weight_decay > 0 else [])
  lr = optax.scale_by_learning_rate(make_schedule(c, num_steps))
  check_feedback_place(c.feedback_scale_at)  # Last: the other checks report their keys first.
  middle = [feedback, adam] if c.feedback_scale_at == 'gradients' else [adam, feedback]
  tx = optax.chain(*clip, *middle, *decay, lr)
  if c.freeze != 'none':
    if param_group is None:
      raise ValueError(f'config.optim.freeze={c.freeze!r} needs a model kind that names its '
                       "parameter groups: model.kind='encoder' (or freeze='none').")
    check_freeze(c, num_layers)
    tx = optax.partition({'train': tx, 'frozen': optax.set_to_zero()},
                         freeze_labels(c, param_group, num_layers))
  return optax.apply_if_finite(tx, max_consecutive_errors=2**30)


def _find(opt_state, cls):
  return next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, cls))
              if isinstance(s, cls))


def feedback_scale(opt_state):
  """The scale the last update used, read from the chain's state."""
  return _find(opt_state, ScaleByFeedbackState).scale


def nonfinite_streak(opt_state):
  """Consecutive steps skipped for non-finite gradients, up to the last one."""
  return _find(opt_state, optax.ApplyIfFiniteState).notfinite_count
