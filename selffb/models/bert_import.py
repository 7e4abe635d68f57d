"""BERT checkpoints in the Hugging Face layout (a local directory: `config.json`,
`model.safetensors`, `vocab.txt` or `tokenizer.json`) as parameters of the 'encoder' kind
(post-norm, learned positions, token types, exact GELU, biases; the MLM decoder tied to the
embeddings or not, as `tie_word_embeddings` says). Read with `safetensors` (numpy); nothing is
downloaded. The tokenizer is `data.tokenizer='wordpiece'` on the same directory
(selffb/data/wordpiece.py).

A fine-tuned head comes along: `classifier.*` of a BertForTokenClassification as the 'tag' head
('tagger'), of a BertForSequenceClassification (with `bert.pooler`) as the 'classify' head
('classifier', pooling 'first'). Every tensor the import does not map (the NSP head, a tied
decoder's copy, buffers) is named in one log line."""
import json
import os

import numpy as np
from absl import logging
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


# The selffb head each Hugging Face fine-tuned architecture's `classifier` becomes.
HEADS = {'BertForTokenClassification': 'tag', 'BertForSequenceClassification': 'classify'}
HEAD_PARAMS = {'tag': 'tagger', 'classify': 'classifier'}


def model_overrides(hf):
  """The config.model values of the encoder that holds a checkpoint of config `hf`."""
  return {'kind': 'encoder', 'num_layers': hf['num_hidden_layers'],
          'num_heads': hf['num_attention_heads'], 'd_model': hf['hidden_size'],
          'mlp_dim': hf['intermediate_size'], 'max_len': hf['max_position_embeddings'],
          'type_vocab_size': hf.get('type_vocab_size', 2),
          'norm_eps': hf.get('layer_norm_eps', 1e-12), 'mlp': ACTIVATIONS[hf['hidden_act']],
          'norm': 'layernorm', 'norm_position': 'post', 'positions': 'learned',
          'use_bias': True, 'tie_embeddings': hf.get('tie_word_embeddings', True)}


def mismatches(model_config, hf):
  """The config.model keys that differ from what the checkpoint needs, as 'key=value' fixes;
  with a fine-tuned head of the config's own kind, its label count and pooling too."""
  wrong = [f'config.model.{k}={v!r} (not {model_config[k]!r})'
           for k, v in model_overrides(hf).items() if model_config[k] != v]
  if fine_tuned_head(hf) != model_config.head:
    return wrong
  labels = num_labels(hf)
  if labels is not None and labels != model_config.num_labels:
    wrong.append(f'config.model.num_labels={labels} (not {model_config.num_labels}: the '
                 f"checkpoint's {architecture(hf)} has {labels} labels, "
                 f"{list(hf.get('id2label', {}).values())})")
  if model_config.head == 'classify' and model_config.pooling != 'first':
    wrong.append(f"config.model.pooling='first' (not {model_config.pooling!r}: the "
                 "checkpoint's classifier reads BERT's pooler)")
  return wrong


def architecture(hf):
  return (hf.get('architectures') or ['BertModel'])[0]


def fine_tuned_head(hf, has_pooler=None):
  """'tag' or 'classify' for a fine-tuned classifier's architecture, else None. Without one in
  config.json, `has_pooler` (of a checkpoint that has a classifier) decides: a sequence
  classifier reads the pooler, a token classifier has none."""
  if architecture(hf) in HEADS:
    return HEADS[architecture(hf)]
  return None if has_pooler is None else 'classify' if has_pooler else 'tag'


def num_labels(hf):
  """The checkpoint's label count (`id2label`, else `num_labels`), or None if it names none."""
  return len(hf['id2label']) if 'id2label' in hf else hf.get('num_labels')


def _dense(w, b, in_shape, out_shape):
  """A torch Linear (weight [out, in]) as a DenseGeneral kernel [*in_shape, *out_shape]."""
  return {'kernel': w.T.reshape(in_shape + out_shape), 'bias': b.reshape(out_shape)}


class _Tensors:
  """The checkpoint's tensors under normalised names (no 'bert.' prefix, LayerNorm weight/bias
  for the old gamma/beta), float32, remembering which ones were read."""

  def __init__(self, raw):
    self.original = {}
    for key in raw:
      name = key[len('bert.'):] if key.startswith('bert.') else key
      name = name.replace('LayerNorm.gamma', 'LayerNorm.weight').replace('LayerNorm.beta',
                                                                          'LayerNorm.bias')
      self.original[name] = key
    self.raw, self.used = raw, set()

  def __contains__(self, name):
    return name in self.original

  def __getitem__(self, name):
    self.used.add(name)
    return self.raw[self.original[name]].astype(np.float32)

  def unused(self):
    return sorted(self.original[n] for n in self.original if n not in self.used)


def _layer(t, p, e, heads, mlp_dim):
  norm = lambda q: {'scale': t[f'{q}.weight'], 'bias': t[f'{q}.bias']}
  dense = lambda q, i, o: _dense(t[f'{q}.weight'], t[f'{q}.bias'], i, o)
  return {'attn': {name: dense(f'{p}attention.self.{name}', (e,), heads)
                   for name in ('query', 'key', 'value')} | {
                       'out': dense(f'{p}attention.output.dense', heads, (e,))},
          'attn_norm': norm(f'{p}attention.output.LayerNorm'),
          'mlp': {'up': dense(f'{p}intermediate.dense', (e,), (mlp_dim,)),
                  'down': dense(f'{p}output.dense', (mlp_dim,), (e,))},
          'mlp_norm': norm(f'{p}output.LayerNorm')}


def _heads(t, hf, e):
  """The checkpoint's heads: 'pooler'; the MLM head ('mlm_transform', 'mlm_norm', 'mlm_bias',
  and 'unembed' if untied); a fine-tuned classifier as 'tagger' or 'classifier'."""
  norm = lambda q: {'scale': t[f'{q}.weight'], 'bias': t[f'{q}.bias']}
  dense = lambda q, i, o: _dense(t[f'{q}.weight'], t[f'{q}.bias'], i, o)
  params = {}
  if 'pooler.dense.weight' in t:
    params['pooler'] = dense('pooler.dense', (e,), (e,))
  if 'cls.predictions.transform.dense.weight' in t:
    params['mlm_transform'] = dense('cls.predictions.transform.dense', (e,), (e,))
    params['mlm_norm'] = norm('cls.predictions.transform.LayerNorm')
    params['mlm_bias'] = t['cls.predictions.bias' if 'cls.predictions.bias' in t
                           else 'cls.predictions.decoder.bias']
    if not hf.get('tie_word_embeddings', True):
      params['unembed'] = {'kernel': t['cls.predictions.decoder.weight'].T}
  if 'classifier.weight' in t:
    head = fine_tuned_head(hf, 'pooler.dense.weight' in t)
    params[HEAD_PARAMS[head]] = dense('classifier', (e,), (t['classifier.weight'].shape[0],))
  return params


def load_params(path, hf=None):
  """The checkpoint's tensors as the encoder's parameter tree (numpy, float32): embeddings,
  layers, and whichever heads it has (`_heads`). Logs the tensors it left out, by name."""
  hf = hf or read_config(path)
  t = _Tensors(safetensors_np.load_file(os.path.join(path, 'model.safetensors')))
  e, h = hf['hidden_size'], hf['num_attention_heads']
  emb = 'embeddings.'
  params = {'embed': {'embedding': t[emb + 'word_embeddings.weight']},
            'pos_embed': {'embedding': t[emb + 'position_embeddings.weight']},
            'embed_norm': {'scale': t[emb + 'LayerNorm.weight'],
                           'bias': t[emb + 'LayerNorm.bias']}}
  if emb + 'token_type_embeddings.weight' in t:
    params['type_embed'] = {'embedding': t[emb + 'token_type_embeddings.weight']}
  for i in range(hf['num_hidden_layers']):
    params[f'layer_{i}'] = _layer(t, f'encoder.layer.{i}.', e, (h, e // h),
                                  hf['intermediate_size'])
  params |= _heads(t, hf, e)
  logging.info('BERT import %s (%s, labels %s): tensors not used: %s', path, architecture(hf),
               hf.get('id2label', 'none'), ', '.join(t.unused()) or 'none')
  return params
