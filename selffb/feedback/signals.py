"""Feedback signals in [0, 1] and their fusion F = sum_i w_i f_i: pure functions.

Token-level signals come from the model's own logits; sequence-level ones (a verifier's
verdict, a recorded rating) arrive with the batch. The same `normalize_weights` and `fuse` serve
the loss (per token) and the self-training candidate scores (per candidate).
"""
import math

import jax
import jax.numpy as jnp

# Token-level signals computed from the model's own logits.
MODEL_SOURCES = ('prob', 'margin', 'entropy')
# Sequence-level signals that arrive with the batch, one float in [0, 1] per sequence.
BATCH_SOURCES = ('verifier', 'rating')


def target_logprob(logits_BxTxV, targets_BxT):
  """log p_t: the log-softmax gathered at the target token."""
  logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  return jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], -1)[..., 0] - logz_BxT


def prob_signal(logits_BxTxV, targets_BxT):
  """p_t, the probability the model gives the target token."""
  return jnp.exp(target_logprob(logits_BxTxV, targets_BxT))


def margin_signal(logits_BxTxV, targets_BxT):
  """sigmoid(z_t - max_{j != t} z_j): the target logit's margin over the best other logit.

  Above 1/2 exactly when the target is the argmax; unlike p_t it ignores how the rest of the
  probability is spread (logits (2, 1, 1) and (2, 1, -inf) give the same margin).
  """
  is_target_BxTxV = jax.nn.one_hot(targets_BxT, logits_BxTxV.shape[-1], dtype=bool)
  best_other_BxT = jnp.max(jnp.where(is_target_BxTxV, -jnp.inf, logits_BxTxV), axis=-1)
  z_t_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], -1)[..., 0]
  return jax.nn.sigmoid(z_t_BxT - best_other_BxT)


def entropy_signal(logits_BxTxV, targets_BxT=None):
  """1 - H(p) / log V: 1 for a one-hot prediction, 0 for a uniform one."""
  del targets_BxT
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  entropy_BxT = -jnp.sum(jnp.exp(logp_BxTxV) * logp_BxTxV, axis=-1)
  return 1.0 - entropy_BxT / jnp.log(logits_BxTxV.shape[-1])


def broadcast_sequence(score_B, shape_BxT):
  """A per-sequence score (a verifier's verdict, a rating) as a per-token signal."""
  return jnp.broadcast_to(jnp.asarray(score_B, jnp.float32)[:, None], shape_BxT)


SIGNALS = {'prob': prob_signal, 'margin': margin_signal, 'entropy': entropy_signal}


def normalize_weights(weights, known, key):
  """Fusion weights `{source: w}` checked against the `known` sources and returned with the
  zero ones dropped and the rest scaled to sum to 1 (so F stays in [0, 1]); `key` is the config
  key the errors name."""
  weights = dict(weights)
  unknown = sorted(set(weights) - set(known))
  if unknown:
    raise ValueError(f'{key} has unknown source(s) {unknown}; known: {tuple(known)}.')
  negative = {k: w for k, w in weights.items() if not 0 <= w < math.inf}  # NaN too.
  if negative:
    raise ValueError(f'{key} must be >= 0 and finite, got {negative}.')
  total = sum(weights.values())
  if total <= 0:
    raise ValueError(f'{key} are all 0: give at least one source a positive weight '
                     f'(sources: {tuple(known)}).')
  return {k: w / total for k, w in weights.items() if w > 0}


def fuse(signals, weights):
  """F = sum_i w_i f_i over normalised `weights`; `signals` holds every weighted source."""
  missing = sorted(set(weights) - set(signals))
  if missing:
    raise ValueError(f'feedback sources {missing} have weight but no signal.')
  return sum(w * signals[k] for k, w in weights.items())
