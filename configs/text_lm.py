"""A small decoder language model with the self-feedback loss, on text that needs no download:
this repository's own Markdown and Python files (about 0.6 MB), tokenized by a SentencePiece
model trained on them (cached under the data dir), packed several documents to a row. It reports
validation perplexity and ends with a few sampled continuations of validation documents.

    python launch.py --config=configs/text_lm.py --workdir=runs/text_lm

One override trains on other text: `--config.data.text.paths='notes/*.txt'` (local files), or
`--config.data.tfds_name=tiny_shakespeare` (or any tfds corpus prepared as ArrayRecord in tfds's
data dir; elsewhere add `--config.data.data_dir=DIR`). `get_config('byte')` uses bytes.
A corpus with split files trains on them as named, e.g. WikiText (docs/data.md):
`--config.data.text.train_paths=DIR/wiki.train.raw` with
`--config.data.text.validation_paths=DIR/wiki.valid.raw` and
`--config.data.text.separator=wikitext_heading`. Validation reports bits per byte beside
perplexity.
"""
import os

import ml_collections

from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = ('*.md', 'docs/*.md', 'selffb/**/*.py', 'configs/**/*.py', 'bench/*.py', 'tests/*.py')


def get_config(arg=None):
  c = default.get_config()
  c.data.task = 'text'
  c.data.text.paths = ','.join(os.path.join(ROOT, p) for p in CORPUS)
  c.data.tokenizer = 'byte' if arg == 'byte' else 'sentencepiece'
  c.data.sentencepiece.vocab_size = 1024
  c.data.seq_len = 128
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.data.text.eval_sequences = 256
  c.model.max_len = 256  # Continuations run past the training length.
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.dropout = 0.1
  c.feedback.loss = 'one_minus'  # CE * (1 - F), F the target-token probability,
  c.feedback.blend = 'linear'  # blended in from plain CE over the first half of training.
  c.optim.lr = 2e-3
  c.train.num_steps = 800
  c.train.eval_every = 200
  c.train.checkpoint_every = 400
  c.sample.temperature = 0.8
  c.sample.top_k = 40
  c.sample.max_new_tokens = 48
  c.evals = ml_collections.ConfigDict()
  c.evals.samples = ml_collections.ConfigDict()
  c.evals.samples.type = 'continuations'  # The first prompt_tokens tokens of num documents.
  c.evals.samples.splits = 'validation'
  c.evals.samples.num = 4
  c.evals.samples.prompt_tokens = 16
  return c
