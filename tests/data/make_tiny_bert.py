"""Writes tests/data/tiny_bert/: a tiny, randomly initialised BERT checkpoint in the Hugging Face
layout (vocab.txt, config.json, model.safetensors, tokenizer.json, tokenizer_config.json) and what
Hugging Face's own code computes from it (reference.npz, tokenizer_reference.json).

selffb never imports transformers; only this script does, in a separate reference venv:

  python3.11 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install transformers==4.46.3 jax==0.4.35 jaxlib==0.4.35 flax==0.10.2 \
      'numpy<2' safetensors tokenizers
  /tmp/refvenv/bin/python tests/data/make_tiny_bert.py

(transformers 4.46 still ships the Flax BERT, which reads a PyTorch-layout model.safetensors
without torch.) The output is deterministic: rerunning it rewrites the same files.
"""
import json
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tiny_bert')
SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']  # Ids 0..4.
PUNCT = list('.,!?\'-:;()"')
LOWER = ('the at in on and is was of to works work lives live he she it they we city bank lake '
         'river house school book red big small old new good day night cat dog runs run walk '
         'play read has have with from for by this that my her his very not see go zurich').split()
CAPITAL = 'The He She It We Anna Berlin Paris London Alice Bob Maria Monday Zürich'.split()
SUFFIXES = ['##ing', '##ed', '##er', '##ly', '##est', '##ion']
LETTERS = [chr(c) for c in range(ord('a'), ord('z') + 1)]
DIGITS = [str(d) for d in range(10)]
TEXTS = [
    'The cat runs at night.',
    'Anna works at the bank in Berlin.',
    'she lives in Zürich, by the lake!',
    'ZÜRICH is a big city',
    "He was playing with the dog's book?",
    'Bob read a Xylophone manual; it was very old.',
    'My house has 3 red doors (and 2 windows).',
    '  Café  crème:  walked   quickly - très bien  ',
    '',
]
BATCH = [('[CLS] Anna works at the bank in Berlin [SEP] she runs [SEP]', 12, 9),  # Text, length,
         ('[CLS] the cat runs at night . [SEP]', 8, None),  # first token of type 1.
         ('[CLS] Bob read a book [SEP]', 6, None)]
SEQ = 12
CONFIG = dict(
    architectures=['BertForMaskedLM'], model_type='bert', hidden_size=32, num_hidden_layers=2,
    num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
    hidden_act='gelu', hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
    position_embedding_type='absolute', tie_word_embeddings=True, torch_dtype='float32')


def vocabulary():
  vocab = (SPECIALS + PUNCT + DIGITS + LETTERS + ['##' + c for c in LETTERS] + SUFFIXES + LOWER
           + CAPITAL)
  assert len(vocab) == len(set(vocab)), 'duplicate vocabulary entries'
  return vocab


def state_dict(v, cfg, seed=0):
  """Random weights under BertForMaskedLM's PyTorch names (Linear weights are [out, in])."""
  rng = np.random.default_rng(seed)
  e, f = cfg['hidden_size'], cfg['intermediate_size']
  normal = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)
  sd = {}

  def linear(name, n_in, n_out):
    sd[name + '.weight'], sd[name + '.bias'] = normal(n_out, n_in), normal(n_out)

  def layer_norm(name):
    sd[name + '.weight'], sd[name + '.bias'] = 1 + normal(e), normal(e)

  sd['bert.embeddings.word_embeddings.weight'] = normal(v, e)
  sd['bert.embeddings.position_embeddings.weight'] = normal(cfg['max_position_embeddings'], e)
  sd['bert.embeddings.token_type_embeddings.weight'] = normal(cfg['type_vocab_size'], e)
  layer_norm('bert.embeddings.LayerNorm')
  for i in range(cfg['num_hidden_layers']):
    p = f'bert.encoder.layer.{i}.'
    for name in ('query', 'key', 'value'):
      linear(p + 'attention.self.' + name, e, e)
    linear(p + 'attention.output.dense', e, e)
    layer_norm(p + 'attention.output.LayerNorm')
    linear(p + 'intermediate.dense', e, f)
    linear(p + 'output.dense', f, e)
    layer_norm(p + 'output.LayerNorm')
  linear('bert.pooler.dense', e, e)
  sd['cls.predictions.bias'] = normal(v)
  linear('cls.predictions.transform.dense', e, e)
  layer_norm('cls.predictions.transform.LayerNorm')
  return sd


def loading_report(cls, path):
  """HF's own missing/unexpected computation (modeling_flax_utils.from_pretrained), as sets."""
  from flax.traverse_util import flatten_dict  # pylint: disable=g-import-not-at-top
  from transformers.modeling_flax_pytorch_utils import (  # pylint: disable=g-import-not-at-top
      load_pytorch_checkpoint_in_flax_state_dict)
  from transformers import BertConfig  # pylint: disable=g-import-not-at-top
  model = cls(BertConfig.from_pretrained(path))
  state = load_pytorch_checkpoint_in_flax_state_dict(
      model, os.path.join(path, 'model.safetensors'), False)
  prefix = cls.base_model_prefix
  if prefix not in dict(model.params_shape_tree) and prefix in state:
    state = state[prefix]
  keys = {'.'.join(k) for k in flatten_dict(state)}
  required = {'.'.join(k) for k in model.required_params}
  return sorted(required - keys), sorted(keys - required)


def batch(tokenizer):
  ids = np.zeros((len(BATCH), SEQ), np.int32)
  types = np.zeros_like(ids)
  for row, (text, length, second) in enumerate(BATCH):
    pieces = tokenizer.convert_tokens_to_ids(text.split())
    assert len(pieces) == length and tokenizer.unk_token_id not in pieces, (text, pieces)
    ids[row, :length] = pieces
    if second is not None:
      types[row, second:length] = 1
  return ids, (ids != 0).astype(np.int32), types


def write_json(name, obj):
  with open(os.path.join(OUT, name), 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)
    f.write('\n')


def main():
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  import transformers as tf  # pylint: disable=g-import-not-at-top
  os.makedirs(OUT, exist_ok=True)
  vocab = vocabulary()
  vocab_file = os.path.join(OUT, 'vocab.txt')
  with open(vocab_file, 'w', encoding='utf-8') as f:
    f.write('\n'.join(vocab) + '\n')
  config = dict(CONFIG, vocab_size=len(vocab))
  write_json('config.json', config)
  # format=pt: HF reads the file as a PyTorch state dict (transposing Linear weights).
  save_file(state_dict(len(vocab), config), os.path.join(OUT, 'model.safetensors'),
            metadata={'format': 'pt'})

  cased = tf.BertTokenizerFast(vocab_file=vocab_file, do_lower_case=False)
  uncased = tf.BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)
  cased.backend_tokenizer.save(os.path.join(OUT, 'tokenizer.json'))
  write_json('tokenizer_config.json', {'do_lower_case': False})
  ids = lambda tok: [tok(t, add_special_tokens=False)['input_ids'] for t in TEXTS]
  write_json('tokenizer_reference.json',
             {'texts': TEXTS, 'uncased': ids(uncased), 'cased': ids(cased)})
  for text, row in zip(TEXTS, ids(cased)):
    print(f'cased {text!r}: {cased.convert_ids_to_tokens(row)}')

  for cls in (tf.FlaxBertForMaskedLM, tf.FlaxBertModel):
    missing, unexpected = loading_report(cls, OUT)
    print(f'{cls.__name__}: missing {missing or "none"}; unexpected {unexpected or "none"}')
    # No weight is left random; the only unused ones are the other class's (pooler / MLM head).
    assert not missing and all(k.startswith(('bert.pooler.', 'cls.')) for k in unexpected)
  mlm = tf.FlaxBertForMaskedLM.from_pretrained(OUT, from_pt=True, dtype=np.float32)
  base = tf.FlaxBertModel.from_pretrained(OUT, from_pt=True, dtype=np.float32)
  input_ids, mask, types = batch(cased)
  out = base(input_ids, attention_mask=mask, token_type_ids=types, train=False)
  logits = mlm(input_ids, attention_mask=mask, token_type_ids=types, train=False).logits
  np.savez(os.path.join(OUT, 'reference.npz'), input_ids=input_ids, attention_mask=mask,
           token_type_ids=types, hidden=np.asarray(out.last_hidden_state, np.float32),
           pooled=np.asarray(out.pooler_output, np.float32),
           mlm_logits=np.asarray(logits, np.float32))
  sizes = {n: os.path.getsize(os.path.join(OUT, n)) for n in sorted(os.listdir(OUT))}
  print(f'vocab {len(vocab)}; wrote {OUT}: {sizes}, {sum(sizes.values())} bytes in all')


if __name__ == '__main__':
  main()
