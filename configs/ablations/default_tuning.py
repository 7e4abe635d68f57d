"""Tuning the default job's self-training rounds for a headline that holds over seeds: more
prompts per round (sampling is cheap; the kept set at a new length is the share right times the
prompts) and more steps per round, each round from the same round 0 (share_round0), 3 seeds.

    python launch.py --mode=sweep --config=configs/ablations/default_tuning.py \
        --workdir=runs/default_tuning
"""
from configs.ablations import default_seeds


def get_config(arg=None):
  return default_seeds.get_config(arg)  # The default before this tuning: 2,000 prompts, 300 steps.


def sweep():
  return {'mode': 'selftrain', 'seeds': (0, 1, 2), 'control': 'default', 'share_round0': True,
          'variants': {'default': {},
                       'prompts8k': {'selftrain.prompts_per_round': 8_000},
                       'prompts8k_steps400': {'selftrain.prompts_per_round': 8_000,
                                              'selftrain.steps_per_round': 400}}}
