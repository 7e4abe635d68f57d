"""The default job over seeds before its rounds were tuned (2,000 prompts and 300 steps a
round; configs/ablations/default_tuning.py took it to 8,000 and 400): configs/default.py in
--mode=selftrain (round 0, then 6, 7 and 8 digits), 3 seeds. Beside it the job as it was
before the ablations (CE * (1 - p_t) and the relative feedback scale on the gradients), and the
default with XLA:CPU's oneDNN dots off, since the rounds amplify float rounding and one run's digits are not the result.

    python launch.py --mode=sweep --config=configs/ablations/default_seeds.py \
        --workdir=runs/default_seeds
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.selftrain.prompts_per_round = 2_000  # As run: before the default took 8,000 and 400.
  c.selftrain.steps_per_round = 300
  return c


def sweep():
  return {'mode': 'selftrain', 'seeds': (0, 1, 2), 'control': 'default',
          'variants': {'default': {},
                       'feedback': {'feedback.loss': 'one_minus',
                                    'optim.feedback_scale': 'relative',
                                    'optim.feedback_scale_at': 'gradients'},
                       'no_onednn': {'train.xla_cpu_onednn': False}}}
