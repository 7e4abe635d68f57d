"""What a self-training round trains with beyond its data: its config (steps, learning-rate
shape), the mix of the original data with the rounds' self-labels, and the optimizer state it
starts from (fresh, or the last round's: Lee et al.'s recipe, config.selftrain.keep_optimizer).
"""
import jax
import optax

from selffb import checkpoint
from selffb.data import pipeline


def round_config(config, r, steps):
  """Round r's config: its seed, steps, one evaluation at the end, and the learning rate of
  config.selftrain (peak `lr` after `warmup_steps`; shaped as config.optim.schedule, or as
  selftrain.schedule with its decay_fraction)."""
  c = config.copy_and_resolve_references()
  st = config.selftrain
  with c.unlocked():
    c.seed = config.seed + r
    c.train.num_steps = steps
    c.train.eval_every = steps  # One evaluation, at the end: a round ends on its last weights.
    c.train.patience = 0
    c.train.checkpoint_every = min(config.train.checkpoint_every, steps)
    c.optim.lr = st.lr
    c.optim.warmup_steps = min(st.warmup_steps, steps - 1)
    if st.schedule != 'optim':
      c.optim.schedule = st.schedule
      c.optim.decay_fraction = st.decay_fraction
  return c


def round_source(base, rounds, st):
  """The round's training source from the original data and each round's self-labelled records
  (a list per round, oldest first), by config.selftrain.mixing: 'pooled' mixes `mix` of every
  kept record (the newest `max_self_examples`), 'rounds' takes `mix` from the newest round and
  spreads the rest over the original data (weight `base_weight`) and each older round (1)."""
  if st.mixing == 'rounds':
    return pipeline.mix_rounds(base, rounds, st.mix, st.base_weight)
  return pipeline.mix(base, [x for records in rounds for x in records], st.mix,
                      st.max_self_examples)


def _is_schedule(x):
  return isinstance(x, optax.ScaleByScheduleState)


def carry_optimizer(fresh, previous):
  """`previous` optimizer state (its Adam moments and step count, its other statistics) with the
  learning-rate schedule's count taken from `fresh`: the round's schedule starts over."""
  return jax.tree.map(lambda f, p: f if _is_schedule(f) else p, fresh, previous,
                      is_leaf=_is_schedule)


def previous_optimizer(previous_dir, max_checkpoints):
  """init_opt_state for train_loop: the optimizer state of the newest checkpoint in
  previous_dir (the round before), carried by carry_optimizer."""

  def init(state):
    got = checkpoint.restore_state(checkpoint.make_manager(previous_dir, max_checkpoints), state)
    if got is None:
      raise FileNotFoundError(f'config.selftrain.keep_optimizer: no checkpoint in '
                              f'{previous_dir}/checkpoints to take the optimizer state from.')
    return carry_optimizer(state.opt_state, got[1].opt_state)

  return init
