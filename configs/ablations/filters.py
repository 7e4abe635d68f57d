"""Which filter should choose the self-labelled answers? Self-training on the default task with
four filters on two prompt schedules, 3 seeds; accuracy per length per round and the kept
labels' precision (measured with the exact check whatever the filter).

Filters (a prompt's best candidate is kept when its score Q >= selftrain.theta):
  verifier    the exact check (ground truth): Q = 1 when the answer is the sum
  confidence  Q = the least probability of the greedy answer's tokens; kept at >= 0.9
  vote        4 samples at temperature 0.7, Q = the share giving the best answer; kept when at
              least 3 of the 4 agree (majority vote)
  none        every greedy answer kept (Q = answer form, theta 0)
Schedules (3 rounds each, so the same training budget):
  from6       today's default: rounds prompt 6, 7, 8 digits; round 0 gets 6 digits only
              5-15% right, so only a verifier finds the few right answers
  from5       Lee et al. (ICML 2025): each round one digit past the longest length round 0
              solves, 5, 6, 7 digits; most self-labels are right

Round 0 is the same for every variant of a seed, so it is trained once (share_round0).

    python launch.py --mode=sweep --config=configs/ablations/filters.py --workdir=runs/filters
"""
from configs import default

_NONE = {f'selftrain.weights.{k}': 0.0 for k in
         ('confidence_mean', 'confidence_min', 'vote', 'format', 'verifier', 'rating')}
_FILTERS = {
    'verifier': {'selftrain.weights.verifier': 1.0, 'selftrain.theta': 1.0},
    'confidence': {'selftrain.weights.confidence_min': 1.0, 'selftrain.theta': 0.9},
    'vote': {'selftrain.weights.vote': 1.0, 'selftrain.theta': 0.75,
             'selftrain.samples_per_prompt': 4, 'selftrain.temperature': 0.7},
    'none': {'selftrain.weights.format': 1.0, 'selftrain.theta': 0.0},
}
_SCHEDULES = {'from6': {'selftrain.start_digits': 6}, 'from5': {'selftrain.start_digits': 0}}


def get_config(arg=None):
  c = default.get_config(arg)
  c.selftrain.rounds = 3
  c.selftrain.prompts_per_round = 2_000  # As run: before the default took 8,000 and 400.
  c.selftrain.steps_per_round = 300
  return c


def sweep():
  return {'mode': 'selftrain', 'seeds': (0, 1, 2), 'control': 'verifier_from6',
          'share_round0': True,
          'variants': {f'{f}_{s}': {**_NONE, **fv, **sv}
                       for s, sv in _SCHEDULES.items() for f, fv in _FILTERS.items()}}
