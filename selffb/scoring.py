"""Scoring and selecting self-training candidates: pure functions of candidate lists.

A candidate is a dict with its answer and one score per source in SOURCES; Q = sum_i w_i f_i
over the normalised weights; each prompt keeps its best candidate if Q clears the threshold.
"""
import importlib
import json
import math

import numpy as np

from selffb import data

SOURCES = ('confidence_mean', 'confidence_min', 'vote', 'format', 'verifier', 'rating')


def normalize_weights(weights):
  """{source: w} -> the non-zero weights scaled to sum to 1; names and signs checked."""
  unknown = sorted(set(weights) - set(SOURCES))
  if unknown:
    raise ValueError(f'config.selftrain.weights: unknown source(s) {unknown}; known: {SOURCES}.')
  if any(w < 0 for w in weights.values()):
    raise ValueError(f'config.selftrain.weights={weights} must be >= 0.')
  total = sum(weights.values())
  if total <= 0:
    raise ValueError('config.selftrain.weights are all 0; give at least one source a weight.')
  return {k: w / total for k, w in weights.items() if w}


def vote_shares(answers):
  """For each of a prompt's k candidate answers, the share of the k that give the same answer."""
  counts = {}
  for a in answers:
    counts[a] = counts.get(a, 0) + 1
  return [counts[a] / len(answers) for a in answers]


def fuse(scores, weights):
  """Q = sum_i w_i f_i over the normalised weights; `scores` maps every weighted source."""
  return sum(w * scores[k] for k, w in weights.items())


def select(groups, theta, top_fraction=1.0):
  """Per prompt (a list of candidates, each a dict with 'q'), the candidate with the highest Q
  (the first on a tie) if Q >= theta; then, if top_fraction < 1, only the top share of those
  prompts by Q (ceil, ties kept in prompt order). Returns the kept candidates in prompt order."""
  best = [max(g, key=lambda c: c['q']) for g in groups if g]
  best = [c for c in best if c['q'] >= theta]
  if top_fraction < 1:
    n = math.ceil(top_fraction * len(best))
    order = sorted(range(len(best)), key=lambda i: -best[i]['q'])[:n]
    best = [best[i] for i in sorted(order)]
  return best


def label_precision(kept):
  """The share of kept samples that are correct (None when nothing was kept)."""
  return sum(c['correct'] for c in kept) / len(kept) if kept else None


# ---- Verifiers and ratings. ----

def resolve_verifier(name, layout):
  """'addition' (exact check of the built-in task), '' (none), or 'module:function' taking
  (prompt, answer) strings and returning a bool."""
  if name == 'addition':
    aligned = layout.positions == 'aligned'
    return lambda prompt, answer: answer == data.addition_answer(prompt, aligned)
  if not name:
    return None
  module, _, fn = name.partition(':')
  try:
    return getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError, ValueError) as e:
    raise ValueError(f"config.selftrain.verifier={name!r} cannot be loaded ({e}); use 'addition' "
                     "or 'package.module:function'.") from None


def load_ratings(path):
  """{(prompt, answer): rating} from a JSON-lines file; a bad line is an error naming it."""
  if not path:
    return {}
  ratings = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
        rating = float(r['rating'])
        if not (isinstance(r['prompt'], str) and isinstance(r['answer'], str)
                and 0 <= rating <= 1):
          raise ValueError('prompt and answer must be strings and rating in [0, 1]')
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path} line {n}: {e!r}; each line must be {{"prompt": str, '
                         '"answer": str, "rating": number in [0, 1]}.') from None
      ratings[(r['prompt'], r['answer'])] = rating
  return ratings


def candidate(tokens, logprobs, digits, layout, tok):
  """A sampled continuation -> its answer text and the sources read off the sample itself."""
  answer_len = digits + 1
  if not layout.eos:  # Fixed-length answers: the model stops by length.
    tokens, logprobs = tokens[:answer_len], logprobs[:answer_len]
  answer = tok.decode(tokens)
  probs = np.exp(logprobs)
  if layout.eos:  # Ended with eos; n or n + 1 digits, no leading (reversed: trailing) zero.
    ended = len(tokens) > 0 and tokens[-1] == tok.eos_id
    right_form = ended and len(answer) in (digits, answer_len) and (
        answer == '0' or answer[-1] != '0')
  else:
    right_form = len(answer) == answer_len
  return {'answer': answer, 'confidence_mean': float(probs.mean()),
          'confidence_min': float(probs.min()),
          'format': float(bool(right_form) and answer.isdigit() and answer.isascii())}
