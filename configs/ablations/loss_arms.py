"""Which loss arm helps? Round 0 of the default task (1-4 digit addition, 1,000 steps) under each
arm, the optimizer's feedback scale off so only the loss differs; greedy exact match at 1-6
digits (in distribution, then 5 and 6), 3 seeds.

    python launch.py --mode=sweep --config=configs/ablations/loss_arms.py \
        --workdir=runs/loss_arms

The `blend_one_minus` variant needs feedback.blend and feedback.blend_fraction (issue 17's
dynamic objective).
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.data.addition.test_digits = (1, 2, 3, 4, 5, 6)
  c.optim.feedback_scale = 'none'
  return c


def sweep():
  return {
      'mode': 'train', 'seeds': (0, 1, 2), 'control': 'ce',
      'variants': {
          'ce': {'feedback.loss': 'ce'},
          'one_minus': {'feedback.loss': 'one_minus'},
          'focal_g1': {'feedback.loss': 'focal_sg', 'feedback.gamma': 1.0},  # Measured as 'focal'.
          'focal_g2': {'feedback.loss': 'focal_sg', 'feedback.gamma': 2.0},  # Likewise.
          'confidence': {'feedback.loss': 'confidence'},  # CE * F: the DFT loss.
          'blend_one_minus': {'feedback.loss': 'one_minus', 'feedback.blend': 'linear',
                              'feedback.blend_fraction': 0.5},
      }}
