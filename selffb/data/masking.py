"""Masked-LM corruption (BERT's): choose a share of the maskable tokens (or of whole words) as
targets; of those, replace a share by the mask token, a share by a random regular token and keep
the rest. Pure numpy functions of a Generator, so a batch's masking is a function of its seed."""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """`config.data.mlm` with the tokenizer's ids: `specials` are never chosen, random
  replacements are drawn from `regular` (ids)."""
  rate: float
  mask: float
  random: float
  whole_word: bool
  mask_id: int
  specials: tuple
  regular: np.ndarray
  starts: np.ndarray  # [V] bool: the token begins a word.
  ends: np.ndarray  # [V] bool: the token after it begins a word.


def word_ids(tokens_BxT, starts_V, ends_V):
  """[B, T] word index of each token within its row: a word begins at a token that starts one,
  after a token that ends one, and at the row's first token."""
  start_BxT = starts_V[tokens_BxT]
  start_BxT[:, 1:] |= ends_V[tokens_BxT[:, :-1]]
  start_BxT[:, 0] = True
  return np.cumsum(start_BxT, axis=1) - 1


def mask_tokens(tokens_BxT, valid_BxT, spec, rng):
  """(inputs, loss_mask) for rows of `tokens` (`valid` False on padding): a token is chosen with
  probability `rate` (whole words: a word is, and then all its pieces); a chosen one becomes the
  mask token with probability `mask`, a random regular token with `random`, else stays. The
  loss is on the chosen tokens, whose targets are `tokens` themselves."""
  maskable_BxT = valid_BxT & ~np.isin(tokens_BxT, spec.specials)
  if spec.whole_word:
    words_BxT = word_ids(tokens_BxT, spec.starts, spec.ends)
    draw_BxT = np.take_along_axis(rng.random(tokens_BxT.shape), words_BxT, axis=1)
  else:
    draw_BxT = rng.random(tokens_BxT.shape)
  chosen_BxT = maskable_BxT & (draw_BxT < spec.rate)
  how_BxT = rng.random(tokens_BxT.shape)
  random_BxT = spec.regular[rng.integers(0, len(spec.regular), tokens_BxT.shape)]
  inputs = np.where(chosen_BxT & (how_BxT < spec.mask), spec.mask_id, tokens_BxT)
  swap_BxT = chosen_BxT & (how_BxT >= spec.mask) & (how_BxT < spec.mask + spec.random)
  inputs = np.where(swap_BxT, random_BxT, inputs).astype(np.int32)
  return inputs, chosen_BxT.astype(np.float32)


def mask_batch(batch, spec, rng):
  """An MLM batch from a batch of token rows ('inputs', 'positions', maybe 'segments'):
  'inputs' corrupted, 'targets' the original tokens, 'loss_mask' on the chosen ones."""
  tokens = np.asarray(batch['inputs'])
  inputs, loss_mask = mask_tokens(tokens, np.asarray(batch['positions']) >= 0, spec, rng)
  return {**batch, 'inputs': inputs, 'targets': tokens, 'loss_mask': loss_mask}
