"""Tasks by name (`config.data.task`). A task module exports its batch keys (BATCH_KEYS,
EVAL_KEYS), the config keys that make its records (DATA_KEYS),
`config_problems(config)`, `load_splits(config, data_dir)`, `batch_format(config)`,
`train_dataset`, `eval_batches`, `example_length`, its loss `loss_fn(outputs, batch, denominator,
step, *, fb)` and teacher-forced `eval_sums(outputs, batch)`, and, if SUPPORTS_SELFTRAIN, the
self-training hooks documented in `addition.py` (docs/extending.md); if SUPPORTS_FINETUNE
(`--mode=finetune`), the hooks documented in `feedback.py`."""
from selffb.tasks import addition
from selffb.tasks import classify
from selffb.tasks import feedback
from selffb.tasks import lm
from selffb.tasks import mlm
from selffb.tasks import ner
from selffb.tasks import pairs
from selffb.tasks import strings

TASKS = {'addition': addition, 'text': lm, 'strings': strings, 'pairs': pairs,
         'feedback': feedback, 'mlm': mlm, 'classify': classify, 'ner': ner}


def get(name):
  """The task module for `config.data.task`."""
  if name not in TASKS:
    raise ValueError(f'config.data.task={name!r}; choose one of {tuple(TASKS)}.')
  return TASKS[name]
