"""What does attention buy, and what does an encoder? The default task (1-4 digit addition,
1,000 steps, greedy exact match at 1-8 digits) learned by the decoder (217K parameters), the
encoder-decoder (2 + 2 blocks, 250K) and an LSTM language model (2 layers of width 112, 231K),
3 seeds, tokens/s side by side (a seq2seq batch pads source and target to the same length, so
the encoder-decoder processes two sequences per example).

    python launch.py --mode=sweep --config=configs/ablations/architectures.py \
        --workdir=runs/architectures
"""
from configs import default


def get_config(arg=None):
  return default.get_config(arg)


def sweep():
  return {
      'mode': 'train', 'seeds': (0, 1, 2), 'control': 'decoder',
      'variants': {
          'decoder': {},
          'encdec': {'model.kind': 'encdec', 'model.num_layers': 2},
          'lstm': {'model.kind': 'lstm', 'model.d_model': 112, 'model.num_layers': 2},
      }}
