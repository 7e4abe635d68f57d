import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selffb.feedback import losses
from selffb.feedback import signals

# Two tokens over a vocabulary of 3: probabilities (1/4, 1/2, 1/4) and (0.1, 0.1, 0.8).
PROBS = np.array([[[0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]])
LOGITS = jnp.asarray(np.log(PROBS) + 3.0, jnp.float32)  # A shift leaves softmax unchanged.
TARGETS = jnp.array([[1, 0]])
P_T = np.array([[0.5, 0.1]])


def test_prob_signal_is_softmax_at_target():
  np.testing.assert_allclose(signals.prob_signal(LOGITS, TARGETS), P_T, rtol=1e-6)


def test_margin_signal_is_sigmoid_of_margin_over_other_logits():
  # z_t - logsumexp(others) = log p_t - log(1 - p_t), so the sigmoid gives back p_t.
  margin = np.log(P_T) - np.log(1 - P_T)
  np.testing.assert_allclose(signals.margin_signal(LOGITS, TARGETS),
                             1 / (1 + np.exp(-margin)), rtol=1e-6)
  np.testing.assert_allclose(signals.margin_signal(LOGITS, TARGETS), P_T, rtol=1e-6)


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
