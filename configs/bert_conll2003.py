"""CoNLL-2003 NER by fine-tuning a BERT checkpoint, for a user with both on disk (nothing is
downloaded at run time): tfds `conll2003` prepared as ArrayRecord in tfds's data dir (or
`--config.data.data_dir=DIR`), and a Hugging Face BERT directory (config.json,
model.safetensors, vocab.txt or tokenizer.json; e.g. bert-base-cased saved with
safe_serialization=True), named after the config file:

    python launch.py --config=configs/bert_conll2003.py:/path/to/bert-base-cased \\
        --workdir=runs/bert_conll2003

From the three files a user downloads instead (CoNLL's four columns, `word POS chunk NER`;
selffb/data/conll.py), a directory holding eng.train / eng.testa / eng.testb or train.txt /
valid.txt / test.txt, or each file by its key (`data.labelled.train_path`, `validation_path`,
`test_path`); local files win over the tfds dataset, and the tag set is the training file's
(`--config.model.num_labels` must be its size: 9 for IOB2 files, and the error names it otherwise):

    python launch.py --config=configs/bert_conll2003.py:/path/to/bert-base-cased \\
        --config.data.labelled.conll_dir=/path/to/conll2003 --workdir=runs/bert_conll2003

The encoder's sizes come from the checkpoint's config.json, its vocabulary from the same
directory (WordPiece, cased or uncased as saved). Three epochs at lr 3e-5 with 10% warmup,
weight decay 0.01, dropout 0.1, best parameters and early stopping by the validation
entity-level F1, the test split's P/R/F1 report at the end. `--config.optim.freeze=top_k`
(with `optim.top_k`), `head_only` or `embeddings` freeze parts of it.
"""
import os

from configs import default
from configs import encoder_ner
from selffb.models import bert_import

# What tests/test_config.py builds it with: the tiny random checkpoint the tests import.
EXAMPLE_ARG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests',
                           'data', 'tiny_bert')


def get_config(arg=None):
  c = encoder_ner.labelled_job(default.get_config())
  c.model.init_from = arg or ''  # Empty: the config check asks for the directory.
  if arg and bert_import.is_checkpoint(arg):
    for key, value in bert_import.model_overrides(bert_import.read_config(arg)).items():
      c.model[key] = value
  else:
    c.model.kind, c.model.max_len = 'encoder', 512
  c.model.head = 'tag'
  c.model.num_labels = 9  # conll2003's tags: O and B-/I- of PER, ORG, LOC, MISC.
  c.model.dropout = 0.1
  c.data.task = 'ner'
  c.data.tokenizer = 'wordpiece'
  c.data.wordpiece.path = arg or ''
  c.data.labelled.tfds_name = 'conll2003'
  c.data.labelled.validation_split = 'dev'
  c.data.seq_len = min(128, c.model.max_len)
  c.data.batch_size = 32
  c.data.eval_batch_size = 128
  c.optim.lr = 3e-5
  c.optim.warmup_steps = 130
  c.optim.weight_decay = 0.01
  c.train.num_steps = 1_300  # About 3 epochs of 14,041 sentences.
  c.train.eval_every = 200
  c.train.checkpoint_every = 400
  c.train.select_metric = 'f1'
  c.train.patience = 3
  return c
