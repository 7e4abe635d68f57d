"""BERT checkpoints in the Hugging Face layout (a local directory: `config.json`,
`model.safetensors`, `vocab.txt` or `tokenizer.json`) as parameters of the 'encoder' kind
(post-norm, learned positions, token types, exact GELU, biases, the MLM head tied to the
embeddings). Read with `safetensors` (numpy); nothing is downloaded. The tokenizer is
`data.tokenizer='wordpiece'` on the same directory (selffb/data/wordpiece.py)."""
import json
import os

import numpy as np
from safetensors import numpy as safetensors_np

from selffb import errors

ACTIVATIONS = {'gelu': 'gelu_exact', 'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu'}
FILES = ('config.json', 'model.safetensors')


def is_checkpoint(path):
  return all(os.path.isfile(os.path.join(path, f)) for f in FILES)


def read_config(path):
  """`config.json` of a BERT checkpoint directory."""
  if not is_checkpoint(path):
    raise errors.InputError(f'{path!r} is not a Hugging Face BERT checkpoint: it needs '
                            f'{" and ".join(FILES)} (PyTorch .bin files are not read: save '
                            'the model with safe_serialization=True).')
  with open(os.path.join(path, 'config.json'), encoding='utf-8') as f:
    hf = json.load(f)
  if hf.get('model_type', 'bert') != 'bert' or hf.get('hidden_act') not in ACTIVATIONS or (
      hf.get('position_embedding_type', 'absolute') != 'absolute'):
    raise errors.InputError(
        f"{path}/config.json: model_type {hf.get('model_type')!r}, hidden_act "
        f"{hf.get('hidden_act')!r}, position_embedding_type "
        f"{hf.get('position_embedding_type', 'absolute')!r}; selffb imports BERT with "
        f"hidden_act in {tuple(ACTIVATIONS)} and absolute positions.")
  return hf


def model_overrides(hf):
  """The config.model values of the encoder that holds a checkpoint of config `hf`."""
  return {'kind': 'encoder', 'num_layers': hf['num_hidden_layers'],
          'num_heads': hf['num_attention_heads'], 'd_model': hf['hidden_size'],
          'mlp_dim': hf['intermediate_size'], 'max_len': hf['max_position_embeddings'],
          'type_vocab_size': hf.get('type_vocab_size', 2),
          'norm_eps': hf.get('layer_norm_eps', 1e-12), 'mlp': ACTIVATIONS[hf['hidden_act']],
          'norm': 'layernorm', 'norm_position': 'post', 'positions': 'learned',
          'use_bias': True, 'tie_embeddings': True}


def mismatches(model_config, hf):
  """The config.model keys that differ from what the checkpoint needs, as 'key=value' fixes."""
  return [f'config.model.{k}={v!r} (not {model_config[k]!r})'
          for k, v in model_overrides(hf).items() if model_config[k] != v]


def _dense(w, b, in_shape, out_shape):
  """A torch Linear (weight [out, in]) as a DenseGeneral kernel [*in_shape, *out_shape]."""
  return {'kernel': w.T.reshape(in_shape + out_shape), 'bias': b.reshape(out_shape)}


def load_params(path, hf=None):
  """The checkpoint's tensors as the encoder's parameter tree (numpy, float32): embeddings,
  layers, and whichever heads it has ('pooler'; MLM: 'mlm_transform', 'mlm_norm',
  'mlm_bias')."""
  hf = hf or read_config(path)
  raw = safetensors_np.load_file(os.path.join(path, 'model.safetensors'))
  # Checkpoints saved from BertModel have no 'bert.' prefix; old ones name norms gamma/beta.
  t = {k[len('bert.'):] if k.startswith('bert.') else k: v.astype(np.float32)
       for k, v in raw.items()}
  for k in list(t):
    t[k.replace('LayerNorm.gamma', 'LayerNorm.weight').replace('LayerNorm.beta',
                                                                'LayerNorm.bias')] = t.pop(k)
  e, h = hf['hidden_size'], hf['num_attention_heads']
  heads = (h, e // h)
  norm = lambda p: {'scale': t[f'{p}.weight'], 'bias': t[f'{p}.bias']}
  dense = lambda p, i, o: _dense(t[f'{p}.weight'], t[f'{p}.bias'], i, o)
  emb = 'embeddings.'
  params = {'embed': {'embedding': t[emb + 'word_embeddings.weight']},
            'pos_embed': {'embedding': t[emb + 'position_embeddings.weight']},
            'embed_norm': norm(emb + 'LayerNorm')}
  if emb + 'token_type_embeddings.weight' in t:
    params['type_embed'] = {'embedding': t[emb + 'token_type_embeddings.weight']}
  for i in range(hf['num_hidden_layers']):
    p = f'encoder.layer.{i}.'
    params[f'layer_{i}'] = {
        'attn': {name: dense(f'{p}attention.self.{name}', (e,), heads)
                 for name in ('query', 'key', 'value')} | {
                     'out': dense(f'{p}attention.output.dense', heads, (e,))},
        'attn_norm': norm(f'{p}attention.output.LayerNorm'),
        'mlp': {'up': dense(f'{p}intermediate.dense', (e,), (hf['intermediate_size'],)),
                'down': dense(f'{p}output.dense', (hf['intermediate_size'],), (e,))},
        'mlp_norm': norm(f'{p}output.LayerNorm')}
  if 'pooler.dense.weight' in t:
    params['pooler'] = dense('pooler.dense', (e,), (e,))
  if 'cls.predictions.transform.dense.weight' in t:
    params['mlm_transform'] = dense('cls.predictions.transform.dense', (e,), (e,))
    params['mlm_norm'] = norm('cls.predictions.transform.LayerNorm')
    bias = t.get('cls.predictions.bias', t.get('cls.predictions.decoder.bias'))
    params['mlm_bias'] = bias
  return params
