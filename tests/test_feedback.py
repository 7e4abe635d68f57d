import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import tiny
from selffb import optim
from selffb.assemble import checks
from selffb.assemble import resume
from selffb.feedback import losses
from selffb.feedback import signals
from selffb.tasks import seq
from selffb.train import state as state_lib
from selffb.train import step as step_lib

# Two tokens over a vocabulary of 3: probabilities (1/4, 1/2, 1/4) and (0.1, 0.1, 0.8).
PROBS = np.array([[[0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]])
LOGITS = jnp.asarray(np.log(PROBS) + 3.0, jnp.float32)  # A shift leaves softmax unchanged.
TARGETS = jnp.array([[1, 0]])
P_T = np.array([[0.5, 0.1]])


def test_prob_signal_is_softmax_at_target():
  np.testing.assert_allclose(signals.prob_signal(LOGITS, TARGETS), P_T, rtol=1e-6)


def test_margin_signal_is_sigmoid_of_margin_over_the_best_other_logit():
  logits = jnp.array([[[2.0, 1.0, 1.0], [2.0, 1.0, -30.0], [0.5, 3.0, -1.0], [4.0, 4.0, 0.0]]])
  targets = jnp.array([[0, 0, 0, 1]])
  # z_t - max_{j != t} z_j: 1, 1 (the third logit does not count), -2.5, 0 (a tie).
  expected = 1 / (1 + np.exp(-np.array([[1.0, 1.0, -2.5, 0.0]])))
  np.testing.assert_allclose(signals.margin_signal(logits, targets), expected, rtol=1e-6)
  assert float(signals.margin_signal(logits, targets)[0, 3]) == 0.5
  # Not p_t: the first two rows have the same margin and different probabilities.
  assert not np.allclose(signals.margin_signal(logits, targets), signals.prob_signal(
      logits, targets), atol=1e-2)


def test_entropy_signal_exact():
  entropy = -(PROBS * np.log(PROBS)).sum(-1)
  np.testing.assert_allclose(signals.entropy_signal(LOGITS), 1 - entropy / np.log(3),
                             rtol=1e-5)
  one_hot = jnp.array([[[50.0, 0.0, 0.0]]])
  uniform = jnp.zeros((1, 1, 3))
  np.testing.assert_allclose(signals.entropy_signal(one_hot), [[1.0]], atol=1e-6)
  np.testing.assert_allclose(signals.entropy_signal(uniform), [[0.0]], atol=1e-6)


def test_sequence_signal_broadcasts_over_tokens():
  out = signals.broadcast_sequence(jnp.array([0.2, 0.9]), (2, 3))
  np.testing.assert_allclose(out, [[0.2] * 3, [0.9] * 3])


def test_fusion_is_normalised_weighted_sum():
  found = {'prob': jnp.array([0.5, 0.1]), 'entropy': jnp.array([1.0, 0.0])}
  weights = losses.validate_weights({'prob': 3.0, 'entropy': 1.0, 'margin': 0.0})
  assert weights == {'prob': 0.75, 'entropy': 0.25}
  fused = signals.fuse(found, weights)
  np.testing.assert_allclose(fused, [0.75 * 0.5 + 0.25, 0.75 * 0.1], rtol=1e-6)
  with pytest.raises(ValueError, match=r"sources \['margin'\] have weight but no signal"):
    signals.fuse(found, {'prob': 0.5, 'margin': 0.5})


@pytest.mark.parametrize('weights, message', [
    ({'prob': -1.0, 'entropy': 2.0}, 'must be >= 0'),
    ({'prob': float('nan')}, 'must be >= 0 and finite'),
    ({'prob': 1.0, 'margin': float('inf')}, 'must be >= 0 and finite'),
    ({'prob': 0.0, 'entropy': 0.0}, 'all 0'),
    ({'probb': 1.0}, r'config.feedback.weights has unknown source\(s\)'),
])
def test_fusion_weight_errors(weights, message):
  with pytest.raises(ValueError, match=message):
    losses.validate_weights(weights)


def test_batch_source_without_scores_is_an_error():
  with pytest.raises(ValueError, match="no 'verifier' scores"):
    losses.compute_feedback(LOGITS, TARGETS, {'prob': 1.0, 'verifier': 1.0})


def test_batch_source_uses_scores():
  f = losses.compute_feedback(LOGITS, TARGETS, {'prob': 1.0, 'rating': 1.0},
                                {'rating': jnp.array([1.0])})
  np.testing.assert_allclose(f, (P_T + 1.0) / 2, rtol=1e-6)


CE = -np.log(P_T)


@pytest.mark.parametrize('arm, per_token', [
    ('ce', CE),
    ('one_minus', CE * (1 - P_T)),
    ('focal', CE * (1 - P_T) ** 3),
    ('focal_sg', CE * (1 - P_T) ** 3),  # F = p_t here: the same value as focal.
    ('one_minus_p', CE * (1 - P_T)),
    ('confidence', CE * P_T),
])
def test_loss_arms_exact(arm, per_token):
  mask = jnp.array([[1.0, 1.0]])
  loss, aux = losses.feedback_loss(LOGITS, TARGETS, mask, loss=arm, weights={'prob': 1.0},
                                     gamma=3.0)
  np.testing.assert_allclose(loss, per_token.mean(), rtol=1e-6)
  np.testing.assert_allclose(aux['ce'], CE.mean(), rtol=1e-6)  # Always unweighted.
  np.testing.assert_allclose(aux['mean_f'], P_T.mean(), rtol=1e-6)
  np.testing.assert_allclose(aux['accuracy'], 0.5)  # Token 1 is argmax; token 0 is not.


def test_mask_excludes_tokens():
  loss, aux = losses.feedback_loss(LOGITS, TARGETS, jnp.array([[0.0, 1.0]]),
                                     loss='one_minus', weights={'prob': 1.0})
  np.testing.assert_allclose(loss, CE[0, 1] * (1 - P_T[0, 1]), rtol=1e-6)
  np.testing.assert_allclose(aux['accuracy'], 0.0)


def test_feedback_is_stop_gradient():
  mask = jnp.ones((1, 2))
  grad = lambda arm: jax.grad(lambda z: losses.feedback_loss(
      z, TARGETS, mask, loss=arm, weights={'prob': 1.0})[0])(LOGITS)
  f = np.asarray(P_T)[..., None]
  # d/dz [CE * (1 - F)] with F held constant is (1 - F) * dCE/dz, and the CE gradient is p - y.
  np.testing.assert_allclose(grad('one_minus'), (1 - f) * grad('ce'), rtol=1e-5, atol=1e-7)
  y = jax.nn.one_hot(TARGETS, 3)
  np.testing.assert_allclose(grad('ce'), (PROBS - y) / 2, rtol=1e-5, atol=1e-7)


def test_unknown_loss_name():
  with pytest.raises(ValueError, match="choose one of"):
    losses.feedback_loss(LOGITS, TARGETS, jnp.ones((1, 2)), loss='focall',
                           weights={'prob': 1.0})


@pytest.mark.parametrize('arm', sorted(losses.LOSS_ARMS))
def test_blend_is_ce_at_zero_and_the_arm_at_one(arm):
  mask = jnp.array([[1.0, 1.0]])
  run = lambda a: losses.feedback_loss(LOGITS, TARGETS, mask, loss=arm, weights={'prob': 1.0},
                                       gamma=3.0, arm_weight=a)
  arm_alone, aux = run(None)
  np.testing.assert_allclose(aux['blend'], 1.0)
  ce_only, aux = run(jnp.float32(0.0))
  np.testing.assert_allclose(ce_only, CE.mean(), rtol=1e-6)
  np.testing.assert_allclose(aux['blend'], 0.0)
  np.testing.assert_allclose(run(jnp.float32(1.0))[0], arm_alone, rtol=1e-6)
  quarter, aux = run(jnp.float32(0.25))
  np.testing.assert_allclose(quarter, 0.75 * CE.mean() + 0.25 * arm_alone, rtol=1e-6)
  np.testing.assert_allclose(aux['ce'], CE.mean(), rtol=1e-6)  # Always unweighted.
  np.testing.assert_allclose(aux['blend'], 0.25)


def test_blend_gradient_is_the_mix_of_the_gradients():
  mask = jnp.ones((1, 2))
  grad = lambda arm, a: jax.grad(lambda z: losses.feedback_loss(
      z, TARGETS, mask, loss=arm, weights={'prob': 1.0}, arm_weight=a)[0])(LOGITS)
  np.testing.assert_allclose(grad('one_minus', 0.3), 0.7 * grad('ce', None) +
                             0.3 * grad('one_minus', None), rtol=1e-5, atol=1e-7)


def test_blend_metric_adds_up_over_microbatches():
  mask = jnp.array([[1.0, 1.0]])
  halves = [losses.feedback_loss(LOGITS[:, i:i + 1], TARGETS[:, i:i + 1], mask[:, i:i + 1],
                                 loss='one_minus', weights={'prob': 1.0}, denominator=2.0,
                                 arm_weight=jnp.float32(0.4))[1]['blend'] for i in (0, 1)]
  np.testing.assert_allclose(sum(halves), 0.4, rtol=1e-6)


@pytest.mark.parametrize('schedule, expected', [
    ('none', [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ('linear', [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]),
    ('cosine', [0.0, (1 - np.cos(np.pi / 4)) / 2, 0.5, (1 + np.cos(np.pi / 4)) / 2, 1.0, 1.0]),
])
def test_blend_schedules(schedule, expected):
  steps = [0, 25, 50, 75, 100, 150]  # A ramp of 100 steps.
  got = [float(losses.blend_weight(schedule, s, 100.0)) for s in steps]
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert got[0] == expected[0] and got[-2:] == [1.0, 1.0]  # Exact at both ends.
  jitted = jax.jit(lambda s: losses.blend_weight(schedule, s, 100.0))
  np.testing.assert_allclose([float(jitted(jnp.int32(s))) for s in steps], got, atol=1e-7)


def test_feedback_spec_ramps_over_a_share_of_the_run():
  c = default.get_config().feedback
  spec = losses.FeedbackSpec.from_config(c, num_steps=1000)
  assert spec.blend == 'none' and spec.arm_weight(0) is None  # The default: the arm alone.
  c.blend, c.blend_fraction = 'linear', 0.2
  spec = losses.FeedbackSpec.from_config(c, num_steps=1000)
  assert spec.blend_steps == 200.0
  np.testing.assert_allclose([spec.arm_weight(s) for s in (0, 100, 200, 999)],
                             [0.0, 0.5, 1.0, 1.0])


def test_blend_errors():
  c = default.get_config().feedback
  c.blend = 'exponential'
  with pytest.raises(ValueError, match=r"config.feedback.blend='exponential'; choose one of"):
    losses.FeedbackSpec.from_config(c, num_steps=10)
  with pytest.raises(ValueError, match='ramps over 0.0 steps'):
    losses.blend_weight('linear', 3, 0.0)


def test_new_keys_bad_values_are_all_reported():
  c = tiny.get_config()
  c.optim.feedback_scale_at = 'adam'
  c.feedback.blend = 'cosin'
  c.feedback.blend_fraction = 0.0
  found = checks.problems(c, 1)
  assert len(found) == 3, found
  for fragment in ("config.optim.feedback_scale_at='adam'; choose one of ('gradients', 'updates')",
                   "config.feedback.blend='cosin'; choose one of ('none', 'linear', 'cosine')",
                   'config.feedback.blend_fraction=0.0 must be a number in (0, 1]'):
    assert any(fragment in p for p in found), fragment


@pytest.mark.parametrize('fraction', [1.5, -0.1, float('nan')])
def test_blend_fraction_out_of_range(fraction):
  c = tiny.get_config()
  c.feedback.blend_fraction = fraction
  assert checks.problems(c, 1) == [
      f'config.feedback.blend_fraction={fraction!r} must be a number in (0, 1].']


def linear_model(params, batch, rngs=None):
  del rngs
  return {'logits': jnp.einsum('btd,dv->btv', batch['inputs'], params['w'])}


@pytest.mark.parametrize('accum_steps', [1, 2])
def test_the_jitted_step_reads_a_t_from_the_state_step(accum_steps):
  c = default.get_config()
  c.feedback.blend, c.feedback.blend_fraction = 'linear', 0.5
  c.optim.schedule = 'constant'
  spec = losses.FeedbackSpec.from_config(c.feedback, num_steps=4)  # a_t: 0, 0.5, 1, 1.
  params = {'w': jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)}
  tx = optim.make_optimizer(c.optim, 4)
  state = state_lib.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                               opt_state=tx.init(params))
  batch = {'inputs': jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 3)), jnp.float32),
           'targets': jnp.array([[1, 2, 3, 4], [0, 1, 2, 3]]), 'loss_mask': jnp.ones((2, 4))}
  step = jax.jit(functools.partial(
      step_lib.train_step, apply_fn=linear_model, loss_fn=functools.partial(seq.loss_fn, fb=spec),
      tx=tx, accum_steps=accum_steps))
  blends = []
  for i in range(4):
    state, metrics = step(state, batch, jax.random.key(0))
    blends.append(float(metrics['blend']))
    if i == 0:
      np.testing.assert_allclose(metrics['loss'], metrics['ce'], rtol=1e-6)  # CE alone.
  np.testing.assert_allclose(blends, [0.0, 0.5, 1.0, 1.0], rtol=1e-6)
  assert step._cache_size() == 1  # One compilation: a_t is traced, not baked in.


# Hand-derived gradients of the mean per-token loss over the two tokens of LOGITS, with F = (p +
# e) / 2 (sources prob and entropy, e = 1 - H / log V) and gamma 3. Every arm is w * CE' per token
# with dCE/dz = P - y; w is (1 - F), F, (1 - F)^gamma with F a constant, and with p not stopped:
# d/dz [CE * (1 - p)^g] = (1 - p)^g dCE/dz + CE * g (1 - p)^(g - 1) * (-dp/dz), dp/dz = -p dCE/dz,
# so w = (1 - p)^(g - 1) * (1 - p - g p log p); the seed's form is its g = 1: 1 - p - p log p.
GAMMA = 3.0
ENT = 1 + (PROBS * np.log(PROBS)).sum(-1) / np.log(3)
F_MIX = (P_T + ENT) / 2
GRAD_WEIGHTS = {
    'ce': np.ones_like(P_T),
    'one_minus': 1 - F_MIX,
    'focal': (1 - P_T) ** (GAMMA - 1) * (1 - P_T - GAMMA * P_T * np.log(P_T)),
    'focal_sg': (1 - F_MIX) ** GAMMA,
    'one_minus_p': 1 - P_T - P_T * np.log(P_T),
    'confidence': F_MIX,
}


def arm_grad(arm, logits, targets, gamma=GAMMA, weights=None):
  loss = lambda z: losses.feedback_loss(z, targets, jnp.ones(targets.shape), loss=arm, gamma=gamma,
                                        weights=weights or {'prob': 1.0, 'entropy': 1.0})[0]
  return np.asarray(jax.grad(loss)(logits))


def test_every_arm_has_a_reference_gradient():
  assert sorted(GRAD_WEIGHTS) == sorted(losses.LOSS_ARMS)


@pytest.mark.parametrize('arm', sorted(GRAD_WEIGHTS))
def test_arm_gradient_matches_the_hand_derived_one(arm):
  y = np.eye(3)[np.asarray(TARGETS)]
  expected = GRAD_WEIGHTS[arm][..., None] * (PROBS - y) / 2  # The mean over two tokens.
  np.testing.assert_allclose(arm_grad(arm, LOGITS, TARGETS), expected, rtol=1e-5, atol=1e-7)


def test_focal_and_focal_sg_differ_in_gradient_not_value():
  prob_only = {'prob': 1.0}
  value = lambda arm: losses.feedback_loss(LOGITS, TARGETS, jnp.ones((1, 2)), loss=arm,
                                           gamma=2.0, weights=prob_only)[0]
  np.testing.assert_allclose(value('focal'), value('focal_sg'), rtol=1e-6)
  focal, stopped = (arm_grad(a, LOGITS, TARGETS, 2.0, prob_only) for a in ('focal', 'focal_sg'))
  assert np.abs(focal - stopped).max() > 0.1 * np.abs(stopped).max()


@pytest.mark.parametrize('gamma', [0.0, 0.5, 1.0, 2.0, 5.0])
def test_focal_matches_lin_et_al_closed_form(gamma):
  # Two classes with logits (0, x): p_t = sigmoid(y x), y = +1 for target 1 and -1 for target 0;
  # Lin et al. (2017), appendix: dFL/dx = y (1 - p_t)^gamma (gamma p_t log(p_t) + p_t - 1).
  x = np.array([-3.0, -0.7, 0.0, 0.4, 2.5])
  logits = jnp.asarray(np.stack([np.zeros_like(x), x], -1)[None], jnp.float32)
  for target, y in ((1, 1.0), (0, -1.0)):
    targets = jnp.full((1, len(x)), target)
    p_t = 1 / (1 + np.exp(-y * x))
    closed = y * (1 - p_t) ** gamma * (gamma * p_t * np.log(p_t) + p_t - 1)
    got = arm_grad('focal', logits, targets, gamma, {'prob': 1.0})[0, :, 1] * len(x)
    np.testing.assert_allclose(got, closed, rtol=1e-5, atol=1e-7)


def test_seed_form_is_focal_at_gamma_one():
  for fn in (lambda arm: losses.feedback_loss(LOGITS, TARGETS, jnp.ones((1, 2)), loss=arm,
                                              gamma=1.0, weights={'prob': 1.0})[0],
             lambda arm: arm_grad(arm, LOGITS, TARGETS, 1.0)):
    np.testing.assert_allclose(fn('one_minus_p'), fn('focal'), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0])
def test_focal_gradient_is_finite_where_p_rounds_to_one(gamma):
  logits = jnp.array([[[60.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # p_t of token 0 is 1 in float32.
  targets = jnp.array([[0, 1]])
  assert float(signals.target_logprob(logits, targets)[0, 0]) == 0.0
  grad = arm_grad('focal', logits, targets, gamma, {'prob': 1.0})
  assert np.isfinite(grad).all()
  np.testing.assert_allclose(grad[0, 0], 0.0, atol=1e-12)


def test_a_run_saved_with_the_old_focal_resumes_as_focal_sg():
  old = default.get_config().to_dict()
  old['feedback']['loss'] = 'focal'
  del old['optim']['feedback_floor']  # Saved before issue 35, when 'focal' was stop-gradient.
  assert resume.migrate(old)['feedback.loss'] == 'focal_sg'
  current = default.get_config()
  current.feedback.loss = 'focal_sg'
  assert resume.config_changes(old, current) == {}
  current.feedback.loss = 'focal'  # Resuming it as Lin et al.'s focal is a change, and shown.
  assert resume.config_changes(old, current) == {'feedback.loss': ('focal_sg', 'focal')}
  new = default.get_config().to_dict()
  new['feedback']['loss'] = 'focal'  # Saved since: it means Lin et al.'s focal and keeps it.
  assert resume.migrate(new)['feedback.loss'] == 'focal'
