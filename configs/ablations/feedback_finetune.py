"""Which part of fine-tuning from recorded feedback helps? The default model (trained first, as
below) fine-tuned on the generated example of configs/feedback_finetune.py (2,000 of its own
answers to 5- and 6-digit problems, rated, labelled, corrected and paired by the exact check),
3 seeds (each draws other problems, another held-out split and another data order; the base
model is the same).

    python launch.py --config=configs/default.py --mode=train --workdir=runs/default
    python launch.py --mode=sweep --config=configs/ablations/feedback_finetune.py \
        --config.finetune.init_workdir=runs/default --workdir=runs/feedback_finetune

Without init_workdir every entry starts from scratch on synthetic answers: another experiment.
  weighted       (control) CE * F, F the rating/label signal, corrections with weight 1; no DPO.
  dpo            + DPO (beta 0.1) on the pairs and on corrections against what they replaced.
  dpo_kto        + labels through the KTO-style loss instead of weighting.
  unweighted_ce  plain CE, no DPO: rated and labelled responses learned alike, right or wrong
                 (replaced ones at weight 0.2, pairs not at all): does the rating matter?
"""
from configs import feedback_finetune


def get_config(arg=None):
  return feedback_finetune.get_config(arg)


def sweep():
  return {
      'mode': 'finetune', 'seeds': (0, 1, 2), 'control': 'weighted',
      'variants': {
          'weighted': {'feedback.preference.weight': 0.0},
          'dpo': {},
          'dpo_kto': {'data.feedback.label_loss': 'kto'},
          'unweighted_ce': {'feedback.loss': 'ce', 'feedback.preference.weight': 0.0},
      }}
