"""The BERT import beyond the base model: fine-tuned token- and sequence-classification heads
into the 'tag' and 'classify' heads (prefixed, and unprefixed with the old gamma/beta names), the
label-count check, an untied MLM decoder, and the log line naming every tensor left unused.
The checkpoints are written here from tests/data/tiny_bert's tensors (no torch needed)."""
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_np

from configs import bert_conll2003
from selffb.assemble import init_from
from selffb.models import bert_import
from selffb.models import encoder

BERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'tiny_bert')
LABELS = 5
ARCH = {'tag': 'BertForTokenClassification', 'classify': 'BertForSequenceClassification'}


def tiny_tensors():
  return safetensors_np.load_file(os.path.join(BERT, 'model.safetensors'))


def write_checkpoint(path, tensors, **config):
  """A Hugging Face BERT directory: tiny_bert's config.json updated by `config`."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(BERT, 'config.json'), encoding='utf-8') as f:
    hf = json.load(f) | config
  with open(os.path.join(path, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(hf, f)
  safetensors_np.save_file(tensors, os.path.join(path, 'model.safetensors'),
                           metadata={'format': 'pt'})
  return str(path)


def old_layout(tensors):
  """As saved from a BertModel by an old version: no 'bert.' prefix, LayerNorm gamma/beta."""
  rename = lambda k: (k[len('bert.'):] if k.startswith('bert.') else k).replace(
      'LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta')
  return {rename(k): v for k, v in tensors.items()}


def fine_tuned(path, head, unprefixed=False, seed=0):
  """A BertFor{Token,Sequence}Classification checkpoint with LABELS labels: its base tensors
  (with the pooler for a sequence classifier only, as HF saves them) and a random classifier."""
  rng = np.random.default_rng(seed)
  tensors = {k: v for k, v in tiny_tensors().items() if not k.startswith('cls.')
             and (head == 'classify' or not k.startswith('bert.pooler.'))}
  tensors['classifier.weight'] = rng.standard_normal((LABELS, 32)).astype(np.float32)
  tensors['classifier.bias'] = rng.standard_normal(LABELS).astype(np.float32)
  if unprefixed:
    tensors = old_layout(tensors)
  labels = {str(i): f'L{i}' for i in range(LABELS)}
  return write_checkpoint(path, tensors, architectures=[ARCH[head]], id2label=labels,
                          label2id={v: int(k) for k, v in labels.items()}), tensors


def model_config(path, head, num_labels=LABELS):
  c = bert_conll2003.get_config(path)
  c.model.update(head=head, num_labels=num_labels, pooling='first')
  return c


def load(c, path):
  """(cfg, loaded params, outputs on the reference batch)."""
  hf = bert_import.read_config(path)
  cfg = encoder.Config.from_config(c.model, hf['vocab_size'])
  fresh = nn.unbox(encoder.build(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))[
      'params'])
  params, _, kept, _ = init_from.merge(fresh, encoder.load_checkpoint(path))
  assert kept == []  # Nothing left fresh: the head came from the checkpoint.
  ref = np.load(os.path.join(BERT, 'reference.npz'))
  valid = ref['attention_mask'] > 0
  pos = np.where(valid, np.arange(valid.shape[1])[None], -1)
  out = encoder.build(cfg).apply({'params': params}, ref['input_ids'], pos, None,
                                 ref['token_type_ids'])[0]
  np.testing.assert_allclose(np.asarray(out['hidden'])[valid], ref['hidden'][valid], atol=1e-5)
  return cfg, params, out


@pytest.mark.parametrize('unprefixed', [False, True])
@pytest.mark.parametrize('head', ['tag', 'classify'])
def test_a_fine_tuned_classifier_loads_into_its_head(head, unprefixed, tmp_path):
  path, tensors = fine_tuned(tmp_path / 'ckpt', head, unprefixed)
  c = model_config(path, head)
  assert init_from.problems(c) == []
  _, params, out = load(c, path)
  w, b = tensors['classifier.weight'], tensors['classifier.bias']
  name = {'tag': 'tagger', 'classify': 'classifier'}[head]
  np.testing.assert_array_equal(params[name]['kernel'], w.T)  # HF Linear weights: [out, in].
  np.testing.assert_array_equal(params[name]['bias'], b)
  if head == 'tag':
    want = np.asarray(out['hidden']) @ w.T + b
  else:
    ref = np.load(os.path.join(BERT, 'reference.npz'))
    np.testing.assert_allclose(out['pooled'], ref['pooled'], atol=1e-5)  # BERT's pooler.
    want = (np.asarray(out['pooled']) @ w.T + b)[:, None]
  np.testing.assert_allclose(out['logits'], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('head', ['tag', 'classify'])
def test_a_label_count_that_disagrees_is_refused_naming_both(head, tmp_path):
  path, _ = fine_tuned(tmp_path / 'ckpt', head)
  problems = init_from.problems(model_config(path, head, num_labels=9))
  assert len(problems) == 1
  assert f'config.model.num_labels={LABELS} (not 9' in problems[0] and ARCH[head] in problems[0]
  other = 'classify' if head == 'tag' else 'tag'  # Another head: the classifier is left out.
  assert init_from.problems(model_config(path, other, num_labels=9)) == []


def test_every_unused_tensor_is_named_in_one_log_line(tmp_path, caplog):
  rng = np.random.default_rng(0)
  tensors = tiny_tensors() | {
      'cls.seq_relationship.weight': rng.standard_normal((2, 32)).astype(np.float32),
      'cls.seq_relationship.bias': np.zeros(2, np.float32),
      'bert.embeddings.position_ids': np.arange(64, dtype=np.int64)[None],
      'cls.predictions.decoder.weight': tiny_tensors()['bert.embeddings.word_embeddings.weight']}
  path = write_checkpoint(tmp_path / 'pretraining', tensors, architectures=['BertForPreTraining'])
  with caplog.at_level(logging.INFO):
    bert_import.load_params(path)
  lines = [r.getMessage() for r in caplog.records if 'not used' in r.getMessage()]
  assert len(lines) == 1
  assert lines[0].endswith('tensors not used: bert.embeddings.position_ids, '
                           'cls.predictions.decoder.weight, cls.seq_relationship.bias, '
                           'cls.seq_relationship.weight')  # The tied decoder's copy too.
  caplog.clear()
  with caplog.at_level(logging.INFO):
    bert_import.load_params(BERT)
  assert any(r.getMessage().endswith('tensors not used: none') for r in caplog.records)


def gelu_layernorm(x, scale, bias):
  x = np.asarray(jax.nn.gelu(x, approximate=False))
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-12) * scale + bias


def test_an_untied_mlm_decoder_loads_as_its_own_projection(tmp_path):
  decoder_weight = np.random.default_rng(0).standard_normal((154, 32)).astype(np.float32)
  tensors = tiny_tensors() | {'cls.predictions.decoder.weight': decoder_weight}
  path = write_checkpoint(tmp_path / 'untied', tensors, tie_word_embeddings=False)
  c = bert_conll2003.get_config(path)
  assert c.model.tie_embeddings is False
  c.model.update(head='mlm', num_labels=0)
  _, params, out = load(c, path)
  np.testing.assert_array_equal(params['unembed']['kernel'], decoder_weight.T)
  t = tensors
  h = np.asarray(out['hidden']) @ t['cls.predictions.transform.dense.weight'].T + t[
      'cls.predictions.transform.dense.bias']
  h = gelu_layernorm(h, t['cls.predictions.transform.LayerNorm.weight'],
                     t['cls.predictions.transform.LayerNorm.bias'])
  want = h @ decoder_weight.T + t['cls.predictions.bias']
  np.testing.assert_allclose(out['logits'], want, atol=1e-4, rtol=1e-4)
  tied = bert_conll2003.get_config(BERT)
  assert tied.model.tie_embeddings is True and 'unembed' not in bert_import.load_params(BERT)
