"""The self-feedback loss arms: pure functions of logits, targets and the fused feedback F.

F is always data: it is stop-gradient'ed before it weights the loss, so the gradient is that of
CE times a constant per token.
"""
import dataclasses

import jax
import jax.numpy as jnp

from selffb.feedback import signals

SOURCES = signals.MODEL_SOURCES + signals.BATCH_SOURCES
WEIGHTS_KEY = 'config.feedback.weights'
LOSS_ARMS = {
    'ce': lambda ce, f, gamma: ce,
    'one_minus': lambda ce, f, gamma: ce * (1.0 - f),
    'focal': lambda ce, f, gamma: ce * (1.0 - f) ** gamma,
    'confidence': lambda ce, f, gamma: ce * f,
}


def validate_weights(weights):
  """config.feedback.weights checked and normalised to sum to 1."""
  return signals.normalize_weights(weights, SOURCES, WEIGHTS_KEY)


def check_loss_name(name):
  if name not in LOSS_ARMS:
    raise ValueError(f'config.feedback.loss={name!r}; choose one of {tuple(LOSS_ARMS)}.')


@dataclasses.dataclass(frozen=True)
class FeedbackSpec:
  """`config.feedback`, validated, as static data for the step."""
  loss: str
  gamma: float
  weights: tuple  # ((source, normalised weight), ...)

  @classmethod
  def from_config(cls, c):
    check_loss_name(c.loss)
    weights = validate_weights(c.weights.to_dict())
    return cls(loss=c.loss, gamma=float(c.gamma), weights=tuple(sorted(weights.items())))


def compute_feedback(logits_BxTxV, targets_BxT, weights, batch_scores=None):
  """The fused, stop-gradient'ed feedback F_BxT for the weighted sources."""
  weights = validate_weights(weights)
  batch_scores = batch_scores or {}
  found = {}
  for name in weights:
    if name in signals.SIGNALS:
      found[name] = signals.SIGNALS[name](logits_BxTxV, targets_BxT)
    elif name in batch_scores:
      found[name] = signals.broadcast_sequence(batch_scores[name], targets_BxT.shape)
    else:
      raise ValueError(f'feedback source {name!r} has weight {weights[name]:.3g} but the batch '
                       f"has no '{name}' scores; set config.feedback.weights.{name}=0 or use a "
                       'dataset that records them.')
  return jax.lax.stop_gradient(signals.fuse(found, weights))


def feedback_loss(logits_BxTxV, targets_BxT, mask_BxT, *, loss='ce', weights, gamma=2.0,
                  batch_scores=None, denominator=None):
  """The weighted loss and, always, the unweighted metrics.

  Returns (loss, aux) where loss = sum(arm(CE, F) * mask) / denominator and aux holds the
  unweighted `ce`, token `accuracy`, `mean_f` (masked sums over the same denominator) and the
  per-token `f`. The denominator defaults to sum(mask); microbatches of one batch pass the whole
  batch's token count, so their losses and metrics add up to the batch's.
  """
  check_loss_name(loss)
  mask_BxT = mask_BxT.astype(jnp.float32)
  ce_BxT = -signals.target_logprob(logits_BxTxV, targets_BxT)
  f_BxT = compute_feedback(logits_BxTxV, targets_BxT, weights, batch_scores)
  per_token_BxT = LOSS_ARMS[loss](ce_BxT, f_BxT, gamma)
  count = jnp.maximum(mask_BxT.sum() if denominator is None else denominator, 1.0)
  mean = lambda x: jnp.sum(x * mask_BxT) / count
  correct_BxT = (jnp.argmax(logits_BxTxV, -1) == targets_BxT).astype(jnp.float32)
  aux = {'ce': mean(ce_BxT), 'accuracy': mean(correct_BxT), 'mean_f': mean(f_BxT), 'f': f_BxT}
  return mean(per_token_BxT), aux
