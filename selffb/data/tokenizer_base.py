"""What every tokenizer shares: the special ids and the base class. Apart from tokenizers.py, so
the tokenizer kinds in their own modules (wordpiece.py) build on it and tokenizers.py names them
all."""
import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3  # Special ids, the same in every tokenizer here.


class Tokenizer:
  """What every tokenizer shares: `encode_prompt`, `encode_many` and `decode` over its own
  `encode` and `_decode` (ids without specials -> text); for masked LM its `special_ids`, the
  `regular_ids` a random replacement is drawn from, and `word_boundaries()`: [V] bool arrays
  of the tokens that begin a word and of those after which a word begins."""
  pad_id, bos_id, eos_id = PAD, BOS, EOS
  special_ids = (PAD, BOS, EOS)

  def encode_many(self, texts):
    return [self.encode(t) for t in texts]

  def encode_prompt(self, text):
    """bos + the text: what a model is given to continue."""
    return np.concatenate([[self.bos_id], self.encode(text)]).astype(np.int32)

  def decode(self, ids):
    """Ids up to the first eos, specials dropped, as text."""
    ids = np.asarray(ids).tolist()
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._decode([i for i in ids if i not in (self.pad_id, self.bos_id, self.eos_id)])
