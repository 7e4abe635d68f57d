"""What carries self-training without ground truth from N+1 digits to N+2? The paper's schedule
(each round prompts one digit past the longest length round 0 solves: 5, 6, 7), every greedy
answer of the right form kept (no verifier; the exact check only measures label precision),
against a wider random position shift in training (more of the position ids longer problems
use are seen) and twice the steps and prompts per round. An exploration: 2 seeds.

    python launch.py --mode=sweep --config=configs/ablations/unsupervised.py \
        --workdir=runs/unsupervised
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.selftrain.rounds = 3
  c.selftrain.start_digits = 0  # max_digits + 1 = 5.
  c.selftrain.weights.verifier = 0.0
  c.selftrain.weights.format = 1.0
  c.selftrain.theta = 0.0
  return c


def sweep():
  return {'mode': 'selftrain', 'seeds': (0, 1), 'control': 'shift2',
          'variants': {
              'shift2': {},
              'shift4': {'data.addition.position_shift': 4},
              'shift4_long': {'data.addition.position_shift': 4,
                              'selftrain.steps_per_round': 600,
                              'selftrain.prompts_per_round': 4_000},
          }}
