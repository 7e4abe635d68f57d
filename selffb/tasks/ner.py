"""Named-entity recognition with an encoder (task 'ner', head 'tag'): B-/I-/O tags per word,
the label on each word's first piece and no loss on the others (the usual recipe), the feedback
signals per token. Data (config.data.labelled): generated sentences with PER/LOC/ORG spans
(`synthetic.ner_sentence`), local CoNLL files (selffb/data/conll.py: `train_path`,
`validation_path`, `test_path` or `conll_dir`), or a tfds dataset by name with a words feature
and a tags feature ('conll2003': 'tokens', 'ner'). The report is entity-level precision,
recall and F1 with the CoNLL semantics (seqeval: type and both boundaries must match) next to
the per-tag token scores; words cut off by seq_len count as predicted 'O'. Early stopping can select on 'f1'
(entity-level, micro)."""
import numpy as np

from selffb.data import conll
from selffb.data import pipeline
from selffb.data import synthetic
from selffb.evaluators import prf
from selffb.tasks import labelled

BATCH_KEYS, EVAL_KEYS, DATA_KEYS = labelled.BATCH_KEYS, labelled.EVAL_KEYS, labelled.DATA_KEYS
loss_fn, eval_sums, predict = labelled.loss_fn, labelled.eval_sums, labelled.predict
example_length, batch_format = labelled.example_length, labelled.batch_format
check_data = labelled.check_data
SUPPORTS_SELFTRAIN = False
MASK_TOKEN = True  # The vocabulary of an MLM-pretrained encoder.
HEAD = 'tag'
SCORES = ('f1', 'precision', 'recall', 'token_accuracy')


def make(rng, split):
  return synthetic.ner_sentence(rng, split)


make.labels = synthetic.TAGS


def _read(record, c):
  text = lambda w: w.decode('utf-8', 'replace') if isinstance(w, bytes) else str(w)
  return {'words': [text(w) for w in record[c.text_feature or 'tokens']],
          'tags': [int(t) for t in record[c.label_feature or 'ner']]}


_read.label_feature = lambda c: c.label_feature or 'ner'


def load_splits(config, data_dir):
  """Local CoNLL files where config.data.labelled names them (they win over its tfds_name),
  else labelled.load_splits (tfds or synthetic)."""
  del data_dir
  c = config.data.labelled
  if not conll.uses_files(c):
    return labelled.load_splits(config, make, 43, _read)
  made, labels = conll.load(c)
  out = {name: pipeline.ListSource(records) for name, records in made.items()}
  for source in out.values():
    source.labels = tuple(labels)
  return out


def align(words, tags, tokenizer, seq_len):
  """(ids, labels): each word's pieces, its tag on the first piece, -1 elsewhere."""
  return labelled.rows(tokenizer.encode_many(words) if words else [], tags, tokenizer, seq_len)


def encode(records, tokenizer, seq_len):
  return labelled.stack([align(r['words'], r['tags'], tokenizer, seq_len) for r in records],
                        seq_len, per_token=True)


train_dataset, eval_batches = labelled.datasets(encode)


def word_predictions(pred_T, mask_T, num_words):
  """A row's predicted tag per word: at the labelled (first-piece) positions, 'O' (0) for words
  cut off."""
  got = pred_T[mask_T > 0][:num_words]
  return np.concatenate([got, np.zeros(num_words - len(got), got.dtype)])


def report(preds, batches, labels):
  """Entity-level (seqeval) and per-tag token scores of the valid rows."""
  true, pred = [], []
  for p, b in zip(preds, batches):
    p = np.asarray(p['pred'])
    for i, record in enumerate(b['records']):  # The valid rows.
      true.append([labels[t] for t in record['tags']])
      pred.append([labels[t] for t in word_predictions(p[i], b['loss_mask'][i],
                                                        len(record['tags']))])
  flat = lambda rows: np.asarray([labels.index(t) for row in rows for t in row], np.int32)
  out = {'entities': prf.entity_report(true, pred),
         'tokens': prf.class_report(flat(true), flat(pred), labels, exclude=('O',))}
  micro = out['entities']['micro']
  out['scores'] = {'f1': micro['f1'], 'precision': micro['precision'],
                   'recall': micro['recall'], 'token_accuracy': out['tokens']['accuracy']}
  return out


def config_problems(config):
  return labelled.problems(config, HEAD) + conll.problems(config.data.labelled)
