"""Named-entity recognition with the encoder (task 'ner', head 'tag'), offline: generated
sentences with PER / LOC / ORG spans tagged B-/I-/O, the tag on each word's first piece. Best
parameters and early stopping by the validation entity-level F1; the test split's report gives
entity-level (CoNLL) and per-tag precision, recall and F1.

    python launch.py --config=configs/encoder_ner.py --workdir=runs/encoder_ner

From scratch as it stands; from the MLM run of configs/encoder_mlm.py with
`--config.model.init_from=runs/encoder_mlm` (and e.g. `--config.optim.freeze=top_k`).
"""
import ml_collections

from configs import default
from configs import encoder_mlm


def labelled_job(c):
  """What the two adaptation configs share."""
  c.data.seq_len = 96
  c.data.batch_size = 32
  c.data.eval_batch_size = 100
  c.train.num_steps = 500
  c.train.eval_every = 100
  c.train.checkpoint_every = 250
  c.train.patience = 3
  c.evals = ml_collections.ConfigDict()
  c.evals.report = ml_collections.ConfigDict()
  c.evals.report.type = 'report'  # P/R/F1 tables, in summary.json too.
  c.evals.report.splits = 'test'
  return c


def get_config(arg=None):
  del arg
  c = labelled_job(encoder_mlm.encoder_model(default.get_config()))
  c.data.task = 'ner'
  c.model.head = 'tag'
  c.model.num_labels = 7  # O, B-/I- of PER, LOC, ORG.
  c.train.select_metric = 'f1'  # Entity-level, micro.
  return c
