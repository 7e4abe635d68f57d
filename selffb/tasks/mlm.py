"""Masked-LM pretraining of an encoder (task 'mlm', model kind 'encoder' with head 'mlm') on the
documents task 'text' reads (a tfds dataset by name or local files, config.data.text): rows
packed or padded by the same grain pipeline, then BERT's corruption (config.data.mlm: the rate,
the 80/10/10 split into mask token / random token / kept, whole words optional) drawn per batch
from the seed, so a resumed run masks exactly as an uninterrupted one. The loss and accuracy are
on the chosen tokens; validation masks its rows with a fixed seed, the same at every evaluation.
The vocabulary gets a mask token (`MASK_TOKEN`), as for the tasks that adapt the encoder."""
import dataclasses

import numpy as np

from selffb.data import lm as lm_data
from selffb.data import masking
from selffb.tasks import lm
from selffb.tasks import seq

BATCH_KEYS = ('inputs', 'targets', 'positions', 'loss_mask', 'segments')
EVAL_KEYS = BATCH_KEYS + ('valid',)
DATA_KEYS = lm.DATA_KEYS + ('data.mlm.',)
SUPPORTS_SELFTRAIN = False
MASK_TOKEN = True
HEAD = 'mlm'  # The encoder head it trains.
loss_fn, eval_sums = seq.loss_fn, seq.eval_sums
load_splits, training_text, check_data, packs = (lm.load_splits, lm.training_text, lm.check_data,
                                                 lm.packs)
example_length = lm.example_length
EVAL_SEED = 1  # Validation's masking.


@dataclasses.dataclass(frozen=True)
class MlmFormat(lm.TextFormat):
  rate: float = 0.15
  mask: float = 0.8
  random: float = 0.1
  whole_word: bool = False

  def mask_spec(self, tokenizer):
    starts, ends = tokenizer.word_boundaries()
    return masking.MaskSpec(rate=self.rate, mask=self.mask, random=self.random,
                            whole_word=self.whole_word, mask_id=tokenizer.mask_id,
                            specials=tuple(tokenizer.special_ids),
                            regular=np.asarray(tokenizer.regular_ids), starts=starts, ends=ends)


def batch_format(config):
  m = config.data.mlm
  return MlmFormat(**dataclasses.asdict(lm.batch_format(config)), rate=m.rate, mask=m.mask,
                   random=m.random, whole_word=m.whole_word)


def train_dataset(source, tokenizer, seq_len, batch_size, seed, process_index=0,
                  process_count=1, fmt=MlmFormat()):
  """Rows of documents (their LM `inputs`: every token after a split's boundary once), masked
  per batch."""
  spec = fmt.mask_spec(tokenizer)
  return lm_data.train_batches(source, tokenizer, fmt.spec(seq_len), batch_size, seed,
                               process_index, process_count, fmt.shuffle_window, fmt.workers,
                               transform=lambda batch, rng: masking.mask_batch(batch, spec, rng))


def eval_batches(source, tokenizer, batch_size, fmt=MlmFormat()):
  spec = fmt.mask_spec(tokenizer)
  batches = lm_data.eval_batches(source, tokenizer, fmt.spec(), batch_size, fmt.eval_sequences)
  return [masking.mask_batch(b, spec, np.random.default_rng([EVAL_SEED, i]))
          for i, b in enumerate(batches)]


def config_problems(config):
  m, found = config.data.mlm, lm.config_problems(config)
  if m.mask + m.random > 1:
    found.append(f'config.data.mlm.mask={m.mask} + random={m.random} exceeds 1: they are shares '
                 'of the chosen tokens (the rest are kept).')
  return found + head_problems(config, HEAD, 0)


def head_problems(config, head, num_labels):
  """The model an encoder task needs: kind 'encoder' with `head` (and `num_labels` labels)."""
  m = config.model
  if m.kind != 'encoder':
    return [f'config.data.task={config.data.task!r} trains an encoder: set '
            f"config.model.kind='encoder' (and config.model.head={head!r}), not {m.kind!r}."]
  found = []
  if m.head != head:
    found.append(f'config.data.task={config.data.task!r} needs config.model.head={head!r}, not '
                 f'{m.head!r}.')
  if num_labels and m.num_labels != num_labels:
    found.append(f'config.data.task={config.data.task!r} has {num_labels} labels: set '
                 f'config.model.num_labels={num_labels}, not {m.num_labels}.')
  return found
