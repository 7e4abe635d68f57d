"""Text classification with the encoder (task 'classify', head 'classify'), offline: generated
reviews labelled negative / neutral / positive, where negation and the clause after 'but'
decide. Best parameters and early stopping by validation accuracy; the test split's report gives
per-class precision, recall and F1.

    python launch.py --config=configs/encoder_classify.py --workdir=runs/encoder_classify

`--config.model.init_from=runs/encoder_mlm` starts from the MLM run; `--config.model.pooling=
mean` pools by the mean instead of the first token.
"""
from configs import default
from configs import encoder_mlm
from configs import encoder_ner


def get_config(arg=None):
  del arg
  c = encoder_ner.labelled_job(encoder_mlm.encoder_model(default.get_config()))
  c.data.task = 'classify'
  c.model.head = 'classify'
  c.model.num_labels = 3
  c.train.select_metric = 'accuracy'
  return c
