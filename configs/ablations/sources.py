"""Which self-feedback signal should weight the loss? CE * (1 - F) with F the target token's
probability, one minus the prediction's normalised entropy, or their mean (`margin` was left
out when it equalled `prob`; since issue 35 it is the sigmoid of the target logit's margin over
the best other logit, not yet measured); round 0 of the default task, the optimizer's feedback
scale off, 3 seeds.

    python launch.py --mode=sweep --config=configs/ablations/sources.py --workdir=runs/sources
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.data.addition.test_digits = (1, 2, 3, 4, 5, 6)
  c.optim.feedback_scale = 'none'
  c.feedback.loss = 'one_minus'
  return c


def sweep():
  return {'mode': 'train', 'seeds': (0, 1, 2), 'control': 'prob',
          'variants': {
              'prob': {'feedback.weights.prob': 1.0, 'feedback.weights.entropy': 0.0},
              'entropy': {'feedback.weights.prob': 0.0, 'feedback.weights.entropy': 1.0},
              'prob_entropy': {'feedback.weights.prob': 1.0, 'feedback.weights.entropy': 1.0},
          }}
