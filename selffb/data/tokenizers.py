"""Tokenizers by name (`config.data.tokenizer`). A tokenizer owns its vocabulary size and its
special ids (pad, bos, eos); the model's vocabulary is read from it, never configured twice."""
import numpy as np


class ByteTokenizer:
  """UTF-8 bytes shifted past three specials: pad 0, bos 1, eos 2."""
  pad_id, bos_id, eos_id, offset = 0, 1, 2, 3
  vocab_size = 256 + 3

  def encode(self, text):
    raw = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    return np.frombuffer(raw, np.uint8).astype(np.int32) + self.offset

  def encode_prompt(self, text):
    """bos + the text: what a model is given to continue."""
    return np.concatenate([[self.bos_id], self.encode(text)]).astype(np.int32)

  def decode(self, ids):
    """Bytes up to the first eos, specials dropped, as text (invalid UTF-8 replaced)."""
    ids = np.asarray(ids).tolist()
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return bytes(i - self.offset for i in ids if i >= self.offset).decode('utf-8', 'replace')


TOKENIZERS = {'byte': ByteTokenizer}


def get(name):
  """The tokenizer `config.data.tokenizer` names."""
  if name not in TOKENIZERS:
    raise ValueError(f'config.data.tokenizer={name!r}; choose one of {tuple(TOKENIZERS)}.')
  return TOKENIZERS[name]()
