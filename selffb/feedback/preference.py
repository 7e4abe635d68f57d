"""Preference losses against a frozen reference: pure functions of sequence log-probabilities.

A sequence's log-probability is the sum of its response tokens' log p. The reference's values
are data (computed once from the starting parameters) and are stop-gradient'ed here as well, so
no gradient ever reaches the reference, however a caller computes it.
"""
import jax
import jax.numpy as jnp

from selffb.feedback import signals


def sequence_logprob(logits_BxTxV, targets_BxT, mask_BxT):
  """sum_t log p(target_t) * mask_t per row: a response's log-probability."""
  return jnp.sum(signals.target_logprob(logits_BxTxV, targets_BxT) * mask_BxT, axis=-1)


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta):
  """DPO (Rafailov et al. 2023) per pair: -log sigmoid(beta * ((chosen - ref_chosen) -
  (rejected - ref_rejected))) over sequence log-probabilities. Returns (loss, margin), margin
  being the implicit reward difference beta * (...)."""
  ref_chosen, ref_rejected = jax.lax.stop_gradient((ref_chosen, ref_rejected))
  margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
  return -jax.nn.log_sigmoid(margin), margin


def kto_reference_point(logp, ref_logp, active):
  """The KTO-style reference point z0: the mean log-ratio log pi - log pi_ref over the active
  rows, floored at 0 and stop-gradient'ed (KTO estimates this KL term from mismatched pairs; a
  batch mean of the rows' own log-ratios is the simpler estimate used here; with gradient
  accumulation, each microbatch's)."""
  ratio = (logp - ref_logp) * active
  return jax.lax.stop_gradient(jnp.maximum(jnp.sum(ratio) / jnp.maximum(jnp.sum(active), 1), 0))


def kto_loss(logp, ref_logp, desirable, beta, z0, lambda_desirable=1.0,
             lambda_undesirable=1.0):
  """KTO-style loss per row (Ethayarajh et al. 2024): with r = logp - ref_logp,
  lambda_D * (1 - sigmoid(beta * (r - z0))) for desirable rows (+1), lambda_U * (1 -
  sigmoid(beta * (z0 - r))) for undesirable ones (-1), 0 for the rest (0)."""
  r = logp - jax.lax.stop_gradient(ref_logp)
  z0 = jax.lax.stop_gradient(z0)
  good = lambda_desirable * (1 - jax.nn.sigmoid(beta * (r - z0)))
  bad = lambda_undesirable * (1 - jax.nn.sigmoid(beta * (z0 - r)))
  return jnp.where(desirable > 0, good, jnp.where(desirable < 0, bad, 0.0))
