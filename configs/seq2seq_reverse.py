"""String reversal with the encoder-decoder (task 'strings', model kind 'encdec'): strings of 1-8
symbols in training, exact match at 4, 8, 10 and 12 (the last two longer than any trained on).

    python launch.py --config=configs/seq2seq_reverse.py --workdir=runs/reverse

`--config.model.kind=decoder` (or 'lstm') runs the same task with the other kinds;
`--config.data.strings.op=sort` sorts instead.
"""
from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.data.task = 'strings'
  c.model.kind = 'encdec'
  c.model.num_layers = 2
  c.train.num_steps = 1_000
  return c
