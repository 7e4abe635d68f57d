"""Text classification with an encoder (task 'classify', head 'classify'): one label per text,
predicted from the pooled hidden state; the feedback signals act per sequence (a row's single
target). Data (config.data.labelled): generated reviews labelled negative / neutral / positive
(`synthetic.review`), or a tfds dataset by name with a text feature and a ClassLabel feature
(e.g. 'imdb_reviews': 'text', 'label'). The report is per-class precision, recall and F1 with
micro and macro averages; early stopping can select on 'accuracy' or 'f1' (macro)."""
import numpy as np

from selffb.data import synthetic
from selffb.evaluators import prf
from selffb.tasks import labelled

BATCH_KEYS, EVAL_KEYS, DATA_KEYS = labelled.BATCH_KEYS, labelled.EVAL_KEYS, labelled.DATA_KEYS
loss_fn, eval_sums, predict = labelled.loss_fn, labelled.eval_sums, labelled.predict
example_length, batch_format = labelled.example_length, labelled.batch_format
check_data = labelled.check_data
SUPPORTS_SELFTRAIN = False
MASK_TOKEN = True  # The vocabulary of an MLM-pretrained encoder.
HEAD = 'classify'
SCORES = ('accuracy', 'f1')


def make(rng, split):
  return synthetic.review(rng, split)


make.labels = synthetic.SENTIMENTS


def _read(record, c):
  text = record[c.text_feature or 'text']
  return {'text': text.decode('utf-8', 'replace') if isinstance(text, bytes) else str(text),
          'label': int(record[c.label_feature or 'label'])}


_read.label_feature = lambda c: c.label_feature or 'label'


def load_splits(config, data_dir):
  del data_dir
  return labelled.load_splits(config, make, 41, _read)


def encode(records, tokenizer, seq_len):
  made = [labelled.rows([tokenizer.encode(r['text'])], [-1], tokenizer, seq_len)
          for r in records]
  batch = labelled.stack(made, seq_len, per_token=False)
  batch['targets'][:, 0] = [r['label'] for r in records]
  batch['loss_mask'][:, 0] = 1.0
  return batch


train_dataset, eval_batches = labelled.datasets(encode)


def report(preds, batches, labels):
  """Per-class precision/recall/F1 of the predicted labels over the valid rows."""
  true, pred = [], []
  for p, b in zip(preds, batches):
    keep = b['valid'] > 0
    true.append(b['targets'][keep, 0])
    pred.append(np.asarray(p['pred'])[keep, 0])
  out = {'classes': prf.class_report(np.concatenate(true), np.concatenate(pred), labels)}
  out['scores'] = {'accuracy': out['classes']['accuracy'],
                   'f1': out['classes']['macro']['f1']}
  return out


def config_problems(config):
  return labelled.problems(config, HEAD)
