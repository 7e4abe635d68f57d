import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from selffb import optim


def optim_config(**overrides):
  c = default.get_config().optim
  c.update(overrides)
  return c


def test_chain_matches_hand_written_adam():
  c = optim_config(feedback_scale='none', weight_decay=0.0, clip_norm=0.0, schedule='constant',
                   lr=0.1)
  tx = optim.make_optimizer(c, num_steps=10)
  params = {'w': jnp.array([1.0, -2.0, 3.0]), 'b': jnp.array([0.5])}
  grads = [{'w': jnp.array([0.1, 0.2, -0.3]), 'b': jnp.array([1.0])},
           {'w': jnp.array([-0.4, 0.0, 0.5]), 'b': jnp.array([2.0])},
           {'w': jnp.array([0.3, -0.1, 0.2]), 'b': jnp.array([-1.0])}]
  state = tx.init(params)
  p = params
  ref = jax.tree.map(np.asarray, params)
  m = jax.tree.map(np.zeros_like, ref)
  v = jax.tree.map(np.zeros_like, ref)
  b1, b2, eps, lr = 0.9, 0.98, 1e-9, 0.1
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update(g, state, p, feedback=0.3)
    p = optax.apply_updates(p, updates)
    for k in ref:
      gk = np.asarray(g[k])
      m[k] = b1 * m[k] + (1 - b1) * gk
      v[k] = b2 * v[k] + (1 - b2) * gk ** 2
      m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
      ref[k] = ref[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
  for k in ref:
    np.testing.assert_allclose(p[k], ref[k], atol=1e-6)


def test_scale_by_feedback_on_a_hand_made_sequence():
  tx = optim.scale_by_feedback('relative', decay=0.5, min_scale=0.5, max_scale=2.0)
  state = tx.init(None)
  g = {'w': jnp.array([2.0, -4.0])}
  # EMA (bias-corrected, including the current batch): 0.2, 0.35/0.75, 0.625/0.875, ...
  # scale = (1 - F) / (1 - EMA_hat): 0.8/0.8, 0.4/(1 - 7/15), 0.1/(1 - 5/7) -> clipped to 0.5,
  # then F = 0.0: EMA = 0.3125/0.9375 = 1/3, scale = 1/(2/3) = 1.5.
  expected = [1.0, 0.75, 0.5, 1.5]
  for f, want in zip([0.2, 0.6, 0.9, 0.0], expected):
    updates, state = tx.update(g, state, feedback=f)
    np.testing.assert_allclose(state.scale, want, rtol=1e-6)
    np.testing.assert_allclose(updates['w'], np.array([2.0, -4.0]) * want, rtol=1e-6)
  assert int(state.count) == 4


def test_scale_by_feedback_none_mode_keeps_updates():
  tx = optim.scale_by_feedback('none', decay=0.5)
  state = tx.init(None)
  updates, state = tx.update({'w': jnp.ones(2)}, state, feedback=0.9)
  np.testing.assert_allclose(updates['w'], 1.0)
  np.testing.assert_allclose(state.ema, 0.45)


def test_chain_routes_feedback_and_exposes_scale():
  c = optim_config(feedback_ema=0.5, weight_decay=0.0, clip_norm=0.0, schedule='constant')
  tx = optim.make_optimizer(c, 10)
  params = {'w': jnp.ones(2)}
  state = tx.init(params)
  for f in (0.2, 0.6):
    _, state = tx.update({'w': jnp.ones(2)}, state, params, feedback=f)
  np.testing.assert_allclose(optim.feedback_scale(state), 0.75, rtol=1e-6)
  with pytest.raises(ValueError, match='needs the batch feedback'):
    tx.update({'w': jnp.ones(2)}, state, params)


def test_weight_decay_skips_norms_and_biases():
  c = optim_config(feedback_scale='none', weight_decay=0.5, clip_norm=0.0, schedule='constant',
                   lr=1.0)
  tx = optim.make_optimizer(c, 10)
  params = {'kernel': jnp.ones((2, 2)), 'scale': jnp.ones(2),
            'query': {'kernel': jnp.ones((2, 2, 2)), 'bias': jnp.ones((2, 2))},  # Per-head bias.
            'stacked_norm': {'scale': jnp.ones((3, 2))}}  # Scanned layers stack scales.
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params, feedback=0.0)
  np.testing.assert_allclose(updates['kernel'], -0.5)  # -lr * wd * p
  np.testing.assert_allclose(updates['query']['kernel'], -0.5)
  np.testing.assert_allclose(updates['scale'], 0.0)
  np.testing.assert_allclose(updates['query']['bias'], 0.0)
  np.testing.assert_allclose(updates['stacked_norm']['scale'], 0.0)


def test_schedules():
  c = optim_config(lr=1.0, warmup_steps=10, final_lr_ratio=0.1, decay_fraction=0.2)
  c.schedule = 'warmup_cosine'
  s = optim.make_schedule(c, 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0, 0.5, 1, 0.55, 0.1],
                             atol=1e-6)
  c.schedule = 'warmup_rsqrt'
  s = optim.make_schedule(c, 110)
  np.testing.assert_allclose([s(5), s(10), s(40)], [0.5, 1.0, np.sqrt(10 / 40)], atol=1e-6)
  c.schedule = 'wsd'
  s = optim.make_schedule(c, 110)  # Warmup 10, stable to 88, linear decay over 22 steps.
  np.testing.assert_allclose([s(5), s(50), s(88), s(99), s(110)], [0.5, 1, 1, 0.55, 0.1],
                             atol=1e-6)
  c.schedule = 'constant'
  np.testing.assert_allclose(optim.make_schedule(c, 110)(0), 1.0)


@pytest.mark.parametrize('overrides, message', [
    (dict(schedule='cosine'), "schedule='cosine'"),
    (dict(feedback_scale='absolute'), "feedback_scale='absolute'"),
    (dict(feedback_scale_min=1.5), 'must contain 1'),
    (dict(warmup_steps=20), 'warmup_steps=20'),
])
def test_bad_optim_config(overrides, message):
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(optim_config(**overrides), num_steps=20)
