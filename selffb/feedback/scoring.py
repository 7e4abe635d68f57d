"""Scoring and selecting self-training candidates: pure functions of candidate lists.

A candidate is a dict with its answer and one score per source in SOURCES; Q = sum_i w_i f_i
over the normalised weights (`signals.fuse`, as for the loss's F); each prompt keeps its best
candidate if Q clears the threshold.
"""
import collections
import importlib
import inspect
import json
import math

from selffb import errors
from selffb.feedback import signals

SOURCES = ('confidence_mean', 'confidence_min', 'vote', 'format', 'verifier', 'rating',
           'consistency')

# A task's self-consistency check: `views(prompt) -> [equivalent prompts]` whose answers must not
# change, and `same_answer(a, b) -> bool`. A task declares it through its `consistency(config)`.
Consistency = collections.namedtuple('Consistency', 'views same_answer')


def normalize_weights(weights):
  """config.selftrain.weights checked and scaled to sum to 1 (zero weights dropped)."""
  return signals.normalize_weights(weights, SOURCES, 'config.selftrain.weights')


def vote_shares(answers):
  """For each of a prompt's k candidate answers, the share of the k that give the same answer."""
  counts = {}
  for a in answers:
    counts[a] = counts.get(a, 0) + 1
  return [counts[a] / len(answers) for a in answers]


def consistency_shares(answers, view_answers, same_answer):
  """For each candidate answer, the share of the prompt's view answers that `same_answer` deems
  equal to it (1.0 when there are no views: nothing disagrees)."""
  if not view_answers:
    return [1.0] * len(answers)
  return [sum(bool(same_answer(a, v)) for v in view_answers) / len(view_answers)
          for a in answers]


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

def resolve_verifier(name, task_verifier):
  """'task' (the task's own exact verifier, `task_verifier`), '' (none), or 'module:function'
  taking (prompt, answer) strings and returning a bool."""
  if name == 'task':
    return task_verifier
  if not name:
    return None
  module, _, fn = name.partition(':')
  try:
    verifier = getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError, ValueError) as e:
    raise errors.InputError(f'config.selftrain.verifier={name!r} cannot be loaded ({e}); use '
                            "'task' or 'package.module:function'.") from None
  try:
    inspect.signature(verifier).bind('prompt', 'answer')
  except TypeError as e:
    raise errors.InputError(f'config.selftrain.verifier={name!r} must take (prompt, answer) '
                            f'strings and return a bool; it cannot be called so: {e}.') from None
  except ValueError:  # Some builtins have no signature to check.
    pass
  return verifier


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
        raise errors.InputError(f'{path} line {n}: {e!r}; each line must be {{"prompt": str, '
                                '"answer": str, "rating": number in [0, 1]}.') from None
      ratings[(r['prompt'], r['answer'])] = rating
  return ratings
