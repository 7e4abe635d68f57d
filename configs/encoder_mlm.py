"""A small BERT-style encoder pretrained with masked LM (task 'mlm', model kind 'encoder', head
'mlm') on text that needs no download: this repository's Markdown and Python files, as bytes,
packed several documents to a row; 15% of the tokens chosen, 80/10/10 mask/random/kept.

    python launch.py --config=configs/encoder_mlm.py --workdir=runs/encoder_mlm

configs/encoder_ner.py and configs/encoder_classify.py adapt it with one override,
`--config.model.init_from=runs/encoder_mlm` (they share `encoder_model`). Other text:
`--config.data.text.paths=...` or `--config.data.tfds_name=...`, as for configs/text_lm.py;
`--config.data.mlm.whole_word=True` masks whole words.
"""
import ml_collections

from configs import default
from configs import text_lm


def encoder_model(c):
  """The encoder the three encoder configs share (so one's checkpoint starts another)."""
  c.model.kind = 'encoder'
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.max_len = 128
  c.model.dropout = 0.1
  c.data.tokenizer = 'byte'
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  return c


def get_config(arg=None):
  del arg
  c = encoder_model(default.get_config())
  c.data.task = 'mlm'
  c.model.head = 'mlm'
  c.data.text.paths = text_lm.get_config().data.text.paths
  c.data.seq_len = 128
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.data.text.eval_sequences = 256
  c.train.num_steps = 600
  c.train.eval_every = 200
  c.train.checkpoint_every = 300
  c.evals = ml_collections.ConfigDict()
  c.evals.masked = ml_collections.ConfigDict()
  c.evals.masked.type = 'teacher_forced'  # CE and accuracy on the masked tokens.
  c.evals.masked.splits = 'validation'
  return c
