"""The self-feedback loss arms: pure functions of logits, targets and the fused feedback F, and
the dynamic objective that blends plain CE into an arm over training.

F is always data: it is stop-gradient'ed before it weights the loss, so in the arms that use F
(`one_minus`, `focal_sg`, `confidence`) the gradient is that of CE times a constant per token.
`focal` and `one_minus_p` use the model's own target probability p_t = exp(-CE) instead, with
the gradient through it (Lin et al.'s focal loss; seed 000's code as written). With a blend
the loss is (1 - a_t) * CE + a_t * arm(CE, F), a_t rising from 0 to 1 over the first
`blend_fraction` of the steps (`blend_weight`).
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

from selffb.feedback import signals

SOURCES = signals.MODEL_SOURCES + signals.BATCH_SOURCES
WEIGHTS_KEY = 'config.feedback.weights'


def focal(ce, f, gamma):
  """CE * (1 - p_t)^gamma, p_t = exp(-CE) with the gradient through it (Lin et al. 2017); F is
  not used. 1 - p_t is -expm1(-CE), exact for small CE, and where it is 0 (p_t rounds to 1) the
  factor is a constant, so gamma < 1 gives the limit's gradient 0 there, not 0 * inf."""
  del f
  one_minus_p = -jnp.expm1(-ce)
  positive = one_minus_p > 0
  factor = jnp.where(positive, jnp.where(positive, one_minus_p, 1.0) ** gamma, 0.0 ** gamma)
  return ce * factor


LOSS_ARMS = {
    'ce': lambda ce, f, gamma: ce,
    'one_minus': lambda ce, f, gamma: ce * (1.0 - f),  # F stop-gradient'ed.
    'focal': focal,
    # The value of focal with (1 - F)^gamma a constant: the gradient is (1 - F)^gamma * dCE.
    'focal_sg': lambda ce, f, gamma: ce * (1.0 - f) ** gamma,
    # Seed 000 §5.2.2 as written: CE * (1 - p_t), p_t the softmax at the target, not detached.
    'one_minus_p': lambda ce, f, gamma: focal(ce, f, 1.0),  # Lin's focal at gamma = 1.
    'confidence': lambda ce, f, gamma: ce * f,
}
BLENDS = {  # a_t as a function of the ramp's progress x in [0, 1].
    'none': lambda x: jnp.ones_like(x),  # The arm alone from the first step.
    'linear': lambda x: x,
    'cosine': lambda x: 0.5 - 0.5 * jnp.cos(jnp.pi * x),
}


def validate_weights(weights):
  """config.feedback.weights checked and normalised to sum to 1."""
  return signals.normalize_weights(weights, SOURCES, WEIGHTS_KEY)


def check_loss_name(name):
  if name not in LOSS_ARMS:
    raise ValueError(f'config.feedback.loss={name!r}; choose one of {tuple(LOSS_ARMS)}.')


def check_blend_name(name):
  if name not in BLENDS:
    raise ValueError(f'config.feedback.blend={name!r}; choose one of {tuple(BLENDS)}.')


def blend_weight(schedule, step, ramp_steps):
  """a_t, the arm's weight at `step` (the steps done before this one; traced or not): a_t =
  BLENDS[schedule](min(step / ramp_steps, 1)), so 0 at step 0 and 1 from step ramp_steps on."""
  check_blend_name(schedule)
  if not ramp_steps > 0:
    raise ValueError(f'the blend ramps over {ramp_steps} steps; config.feedback.blend_fraction '
                     'and config.train.num_steps must be > 0.')
  return BLENDS[schedule](jnp.clip(jnp.asarray(step, jnp.float32) / ramp_steps, 0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class FeedbackSpec:
  """`config.feedback`, validated, as static data for the step."""
  loss: str
  gamma: float
  weights: tuple  # ((source, normalised weight), ...)
  blend: str  # A name in BLENDS.
  blend_steps: float  # Steps over which a_t rises to 1: blend_fraction * train.num_steps.
  beta: float = 0.1  # Preference losses (recorded feedback): DPO / KTO temperature.
  preference_weight: float = 1.0  # Weight of the preference terms next to the weighted CE.
  kto_desirable: float = 1.0  # KTO-style lambda_D.
  kto_undesirable: float = 1.0  # KTO-style lambda_U.

  @classmethod
  def from_config(cls, c, num_steps):
    """From `config.feedback` and the run's `config.train.num_steps`."""
    check_loss_name(c.loss)
    check_blend_name(c.blend)
    weights = validate_weights(c.weights.to_dict())
    p = c.preference
    values = (p.beta, p.weight, p.kto_desirable, p.kto_undesirable)
    if not (all(math.isfinite(v) for v in values) and p.beta > 0 and min(values) >= 0):
      raise ValueError(f'config.feedback.preference: beta={p.beta} must be > 0 and weight, '
                       'kto_desirable, kto_undesirable >= 0, all finite.')
    return cls(loss=c.loss, gamma=float(c.gamma), weights=tuple(sorted(weights.items())),
               blend=c.blend, blend_steps=float(c.blend_fraction * num_steps),
               beta=float(p.beta), preference_weight=float(p.weight),
               kto_desirable=float(p.kto_desirable), kto_undesirable=float(p.kto_undesirable))

  def arm_weight(self, step):
    """a_t at `step`, or None for blend 'none' (the arm alone, with no CE term computed)."""
    return None if self.blend == 'none' else blend_weight(self.blend, step, self.blend_steps)


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
                  batch_scores=None, denominator=None, arm_weight=None):
  """The weighted loss and, always, the unweighted metrics.

  Returns (loss, aux) where loss = sum(((1 - a) * CE + a * arm(CE, F)) * mask) / denominator,
  a = `arm_weight` (a_t of the blend; None: the arm alone), and aux holds the unweighted `ce`,
  token `accuracy`, `mean_f`, `blend` (a; masked sums over the same denominator) and the
  per-token `f`, `logp` (log p of each target) and `correct`. The denominator defaults to
  sum(mask); microbatches of one batch pass the whole batch's token count, so their losses and
  metrics add up to the batch's.
  """
  check_loss_name(loss)
  mask_BxT = mask_BxT.astype(jnp.float32)
  logp_BxT = signals.target_logprob(logits_BxTxV, targets_BxT)
  ce_BxT = -logp_BxT
  f_BxT = compute_feedback(logits_BxTxV, targets_BxT, weights, batch_scores)
  per_token_BxT = LOSS_ARMS[loss](ce_BxT, f_BxT, gamma)
  if arm_weight is not None:  # None leaves the CE term out of the graph.
    per_token_BxT = (1.0 - arm_weight) * ce_BxT + arm_weight * per_token_BxT
  count = jnp.maximum(mask_BxT.sum() if denominator is None else denominator, 1.0)
  mean = lambda x: jnp.sum(x * mask_BxT) / count
  correct_BxT = (jnp.argmax(logits_BxTxV, -1) == targets_BxT).astype(jnp.float32)
  # a's share of this (micro)batch's tokens, so microbatches' values add up to a.
  blend = (1.0 if arm_weight is None else arm_weight) * jnp.sum(mask_BxT) / count
  aux = {'ce': mean(ce_BxT), 'accuracy': mean(correct_BxT), 'mean_f': mean(f_BxT),
         'blend': blend, 'f': f_BxT, 'logp': logp_BxT, 'correct': correct_BxT}
  return mean(per_token_BxT), aux
