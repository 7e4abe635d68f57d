"""The default job's headline over seeds: configs/default.py in --mode=selftrain (round 0, then
6, 7 and 8 digits), 3 seeds. Beside it the job as it was before the ablations (CE * (1 - p_t)
and the relative feedback scale on the gradients), and the default with XLA:CPU's oneDNN dots
off, since the rounds amplify float rounding and one run's digits are not the result.

    python launch.py --mode=sweep --config=configs/ablations/default_seeds.py \
        --workdir=runs/default_seeds
"""
from configs import default


def get_config(arg=None):
  return default.get_config(arg)


def sweep():
  return {'mode': 'selftrain', 'seeds': (0, 1, 2), 'control': 'default',
          'variants': {'default': {},
                       'feedback': {'feedback.loss': 'one_minus',
                                    'optim.feedback_scale': 'relative',
                                    'optim.feedback_scale_at': 'gradients'},
                       'no_onednn': {'train.xla_cpu_onednn': False}}}
