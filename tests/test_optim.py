import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from selffb import errors
from selffb import optim
from selffb.assemble import resume as resume_lib


def optim_config(**overrides):
  c = default.get_config().optim
  c.feedback_scale = 'relative'  # The scaled chain these tests check (the default is 'none').
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
  tx = optim.scale_by_feedback('relative', decay=0.5, min_scale=0.5, max_scale=2.0,
                               floor=1e-9)  # Below the tolerance: r is (1 - F) / EMA(1 - F).
  state = tx.init(None)
  g = {'w': jnp.array([2.0, -4.0])}
  # EMA(F) (bias-corrected, including the current batch): 0.2, 7/15, 5/7, 1/3.
  # r = (1 - F) / (1 - EMA(F)): 1, 0.4 / (8/15) = 3/4, 0.1 / (2/7) = 7/20, 1 / (2/3) = 3/2.
  # EMA(r): 1, 0.625 / 0.75 = 5/6, 0.4875 / 0.875 = 39/70, 0.99375 / 0.9375 = 53/50.
  # s = r / EMA(r): 1, 9/10, 49/78, 75/53 (none reaches a clip).
  expected = [1.0, 0.9, 49 / 78, 75 / 53]
  for f, want in zip([0.2, 0.6, 0.9, 0.0], expected):
    updates, state = tx.update(g, state, feedback=f)
    np.testing.assert_allclose(state.scale, want, rtol=1e-6)
    np.testing.assert_allclose(updates['w'], np.array([2.0, -4.0]) * want, rtol=1e-6)
  assert int(state.count) == 4


def test_scale_by_feedback_clips():
  tx = optim.scale_by_feedback('relative', decay=0.5, min_scale=0.8, max_scale=1.2, floor=1e-9)
  state = tx.init(None)
  scales = []
  for f in (0.2, 0.6, 0.9, 0.0):  # The sequence above: 1, 0.9, 0.628, 1.415 before the clip.
    _, state = tx.update({'w': jnp.ones(1)}, state, feedback=f)
    scales.append(float(state.scale))
  np.testing.assert_allclose(scales, [1.0, 0.9, 0.8, 1.2], rtol=1e-6)


@pytest.mark.parametrize('first', [0.0, 0.3, 0.95, 1.0])
def test_first_scale_is_exactly_one(first):
  tx = optim.scale_by_feedback('relative', decay=0.99)
  _, state = tx.update({'w': jnp.ones(1)}, tx.init(None), feedback=first)
  assert float(state.scale) == 1.0


def simulated_scales(feedbacks, decay=0.99):
  """The scales of the default settings over a run with these batch feedbacks, jitted."""
  tx = optim.scale_by_feedback('relative', decay=decay, min_scale=0.5, max_scale=2.0)

  def one(state, f):
    _, state = tx.update({'w': jnp.ones(1)}, state, feedback=f)
    return state, state.scale

  return np.asarray(jax.lax.scan(one, tx.init(None), jnp.asarray(feedbacks, jnp.float32))[1])


@pytest.mark.parametrize('name', ['linear', 'saturating', 'noisy'])
def test_relative_scale_keeps_its_mean_near_one_while_f_rises(name):
  t = np.arange(1000)
  feedbacks = {
      'linear': np.linspace(0.2, 0.95, 1000),  # The steady rise of the issue.
      'saturating': 0.97 - 0.8 * np.exp(-t / 250),  # Fast early, then levelling off.
      'noisy': np.clip(np.linspace(0.2, 0.95, 1000) +
                       np.random.default_rng(0).normal(0, 0.02, 1000), 0, 1),
  }[name]
  scales = simulated_scales(feedbacks)
  assert scales[0] == 1.0
  # The ratio (1 - F) / (1 - EMA(F)) alone, clipped, had means 0.82, 0.75 and 0.83 here (0.73
  # and 0.74 over the second half of the smooth rises) and its minimum was the 0.5 clip on the
  # linear rise; r / EMA(r) gives 0.95, 0.99, 0.95 (0.92 and 1.02), minimum 0.69 and 0.92.
  assert abs(scales.mean() - 1) < 0.06, scales.mean()
  assert abs(scales[500:].mean() - 1) < 0.1, scales[500:].mean()
  if name != 'noisy':
    assert scales.min() > 0.6, scales.min()


def test_relative_scale_keeps_stationary_feedback_near_one():
  feedbacks = np.clip(0.6 + np.random.default_rng(1).normal(0, 0.05, 2000), 0, 1)
  scales = simulated_scales(feedbacks)
  assert abs(scales.mean() - 1) < 0.01, scales.mean()
  assert scales.std() > 0.05  # Harder and easier batches still move the weights differently.


@pytest.mark.parametrize('f', [1.0, 0.0, 0.3, 0.999])
def test_relative_scale_is_one_for_steady_feedback(f):
  scales = simulated_scales(np.full(500, f))
  if f == 1.0:  # Batches at F = 1 exactly (a learned task in float32): r = floor / floor.
    assert (scales == 1.0).all(), scales[scales != 1.0][:5]
  np.testing.assert_allclose(scales, 1.0, rtol=1e-5)


def test_relative_scale_returns_to_one_once_f_settles_at_one():
  # Before issue 35, F at exactly 1 pinned s at its 0.5 minimum from the switch on. Now batches
  # at 1 are easier than the run's recent ones only until EMA(1 - F) falls below the floor:
  # 190 steps at the minimum here, then s returns to 1 (overshooting while r catches up).
  after = simulated_scales(np.concatenate([np.linspace(0.5, 0.99, 300), np.ones(1700)]))[300:]
  assert (after == 0.5).sum() < 250 and abs(after.mean() - 1) < 0.1, after.mean()
  np.testing.assert_allclose(after[-200:], 1.0, atol=1e-3)


def test_scale_by_feedback_none_mode_keeps_updates():
  tx = optim.scale_by_feedback('none', decay=0.5)
  state = tx.init(None)
  updates, state = tx.update({'w': jnp.ones(2)}, state, feedback=0.9)
  np.testing.assert_allclose(updates['w'], 1.0)
  np.testing.assert_allclose(state.ema, 0.05, rtol=1e-6)  # EMA(1 - F), before bias correction.


def test_chain_routes_feedback_and_exposes_scale():
  c = optim_config(feedback_ema=0.5, weight_decay=0.0, clip_norm=0.0, schedule='constant',
                   feedback_floor=1e-9)  # The hand-made sequence's second scale, 0.9.
  tx = optim.make_optimizer(c, 10)
  params = {'w': jnp.ones(2)}
  state = tx.init(params)
  for f in (0.2, 0.6):
    _, state = tx.update({'w': jnp.ones(2)}, state, params, feedback=f)
  np.testing.assert_allclose(optim.feedback_scale(state), 0.9, rtol=1e-6)
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
    (dict(feedback_floor=0.0), 'feedback_floor=0.0 must be > 0'),
    (dict(warmup_steps=20), 'warmup_steps=20'),
    (dict(feedback_scale_at='adam', warmup_steps=10), "feedback_scale_at='adam'"),
])
def test_bad_optim_config(overrides, message):
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(optim_config(**overrides), num_steps=20)


PARAMS = {'kernel': jnp.array([[1.0, -2.0], [3.0, 0.5]])}
GRADS = [{'kernel': jnp.array([[0.1, 0.2], [-0.3, 1.0]])},
         {'kernel': jnp.array([[-0.4, 0.0], [0.5, 2.0]])},
         {'kernel': jnp.array([[0.3, -0.1], [0.2, -1.0]])}]
NEXT_GRAD = {'kernel': jnp.array([[0.2, 0.3], [-0.1, 0.4]])}


def placed(place, **overrides):
  """The chain with the feedback scale at `place`: constant lr, no clip, no weight decay."""
  c = optim_config(feedback_scale_at=place, feedback_ema=0.5, weight_decay=0.0, clip_norm=0.0,
                   schedule='constant', lr=0.1)
  c.update(overrides)
  return optim.make_optimizer(c, num_steps=10)


def warmed(tx):
  """The chain's state after three steps with feedback 0.2, 0.6, 0.4."""
  state = tx.init(PARAMS)
  for g, f in zip(GRADS, (0.2, 0.6, 0.4)):
    _, state = tx.update(g, state, PARAMS, feedback=f)
  return state


def step_from(tx, state, feedback):
  """(update, scale it used) of one more step from `state`."""
  updates, state = tx.update(NEXT_GRAD, state, PARAMS, feedback=feedback)
  return updates['kernel'], float(optim.feedback_scale(state))


@pytest.mark.parametrize('feedback', [0.1, 0.7])
def test_updates_scale_multiplies_adams_update_exactly(feedback):
  state = warmed(placed('updates'))
  unscaled, one = step_from(placed('updates', feedback_scale='none'), state, feedback)
  scaled, s = step_from(placed('updates'), state, feedback)
  assert one == 1.0 and abs(s - 1) > 0.1
  np.testing.assert_allclose(scaled, s * unscaled, rtol=1e-6)


@pytest.mark.parametrize('feedback', [0.1, 0.7])
def test_gradients_scale_does_not_move_the_update_proportionally(feedback):
  state = warmed(placed('gradients'))
  unscaled, _ = step_from(placed('gradients', feedback_scale='none'), state, feedback)
  scaled, s = step_from(placed('gradients'), state, feedback)
  assert abs(s - 1) > 0.1
  ratio = np.linalg.norm(scaled) / np.linalg.norm(unscaled)
  assert abs(np.log(ratio)) < 0.5 * abs(np.log(s))  # Adam's normalisation absorbs the scale.


@pytest.mark.parametrize('place', ['gradients', 'updates'])
def test_displacement_ratio_under_two_scales_from_one_state(place):
  tx = placed(place)
  state = warmed(tx)
  moved = {}
  for f in (0.1, 0.9):  # A harder and an easier batch than the run so far.
    updates, s = step_from(tx, state, f)
    new = optax.apply_updates(PARAMS, {'kernel': updates})
    moved[f] = (np.linalg.norm(new['kernel'] - PARAMS['kernel']), s)
  (d_hard, s_hard), (d_easy, s_easy) = moved[0.1], moved[0.9]
  assert s_hard / s_easy > 2
  if place == 'updates':
    np.testing.assert_allclose(d_hard / d_easy, s_hard / s_easy, rtol=1e-5)
  else:
    assert abs(np.log(d_hard / d_easy)) < 0.5 * np.log(s_hard / s_easy)  # Adam absorbs most.


def test_updates_scale_leaves_weight_decay_and_lr_outside():
  # Behind Adam the scale leaves Adam's moments alone, so the two chains' states match.
  unscaled, _ = step_from(placed('updates', feedback_scale='none'), warmed(placed('updates')),
                          0.1)
  decayed = placed('updates', weight_decay=0.5)
  scaled, s = step_from(decayed, warmed(decayed), 0.1)
  # -lr * (s * adam + wd * p), and unscaled = -lr * adam.
  np.testing.assert_allclose(scaled, s * unscaled - 0.1 * 0.5 * PARAMS['kernel'], rtol=1e-6)


def test_the_place_orders_the_chain():
  names = lambda place: [type(s).__name__ for s in warmed(placed(place)).inner_state]
  assert names('gradients') == ['ScaleByFeedbackState', 'ScaleByAdamState',
                                'ScaleByScheduleState']
  assert names('updates') == ['ScaleByAdamState', 'ScaleByFeedbackState', 'ScaleByScheduleState']


def resume(saved_optim, current_optim, saved_drop=()):
  """resume_lib.resume_changes for a default config saved with these optim values, resumed with
  those; `saved_drop` keys are left out of the saved config, as older selffbs wrote it."""
  saved, current = default.get_config(), default.get_config()
  for c in (saved, current):
    c.optim.feedback_scale = 'relative'
  saved.optim.update(saved_optim)
  current.optim.update(current_optim)
  saved_dict = saved.to_dict()
  for key in saved_drop:
    del saved_dict['optim'][key]
  params = {'kernel': jax.ShapeDtypeStruct((2, 2), jnp.float32)}
  return resume_lib.resume_changes(saved_dict, current, params)


def test_resume_refuses_a_checkpoint_from_before_the_ratio_ema():
  with pytest.raises(errors.ConfigError, match='written before optim.feedback_scale_at existed'):
    resume({}, {}, saved_drop=('feedback_scale_at',))


def test_resume_across_feedback_settings():
  assert resume({}, {}) == {}
  assert resume({'feedback_scale': 'none'}, {}) == {
      'optim.feedback_scale': ('none', 'relative')}  # The same state: it resumes.
  with pytest.raises(errors.ConfigError, match="feedback_scale_at 'gradients' -> 'updates'"):
    resume({}, {'feedback_scale_at': 'updates'})  # The chain's states come in another order.


def test_resume_refuses_a_relative_scale_state_from_before_the_floor():
  with pytest.raises(errors.ConfigError, match='written before optim.feedback_floor existed'):
    resume({}, {}, saved_drop=('feedback_floor',))  # Its state held EMA(F), not EMA(1 - F).
  assert resume({'feedback_scale': 'none'}, {'feedback_scale': 'none'},
                saved_drop=('feedback_floor',)) == {}  # The EMAs are unused: it resumes.
