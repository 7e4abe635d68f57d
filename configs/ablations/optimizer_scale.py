"""Does scaling the optimizer's step by the batch's feedback help? The scale off, on the
gradients (before Adam) and on the updates (after Adam), with plain CE and with CE * (1 - p_t);
round 0 of the default task, 3 seeds.

    python launch.py --mode=sweep --config=configs/ablations/optimizer_scale.py \
        --workdir=runs/optimizer_scale

Needs optim.feedback_scale_at (issue 17).
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.data.addition.test_digits = (1, 2, 3, 4, 5, 6)
  return c


def _scales(loss):
  return {f'{loss}_none': {'feedback.loss': loss, 'optim.feedback_scale': 'none'},
          f'{loss}_gradients': {'feedback.loss': loss, 'optim.feedback_scale': 'relative',
                                'optim.feedback_scale_at': 'gradients'},
          f'{loss}_updates': {'feedback.loss': loss, 'optim.feedback_scale': 'relative',
                              'optim.feedback_scale_at': 'updates'}}


def sweep():
  return {'mode': 'train', 'seeds': (0, 1, 2), 'control': 'ce_none',
          'variants': {**_scales('ce'), **_scales('one_minus')}}
