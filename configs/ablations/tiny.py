"""A seconds-long sweep for trying the machinery (offline, on a laptop CPU): configs/tiny.py
with plain CE against CE * (1 - p_t), two seeds each.

    python launch.py --mode=sweep --config=configs/ablations/tiny.py --workdir=runs/tiny_sweep
"""
from configs import tiny


def get_config(arg=None):
  return tiny.get_config(arg)


def sweep():
  return {'mode': 'train', 'seeds': (0, 1), 'control': 'ce',
          'variants': {'ce': {'feedback.loss': 'ce'},
                       'one_minus': {'feedback.loss': 'one_minus'}}}
