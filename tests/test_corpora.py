"""Real corpora from the files a user downloads, written small by each test: CoNLL-2003's four
columns for the ner task (and configs/bert_conll2003.py on them), WikiText-style split files
for the text task, and bits per byte beside perplexity."""
import json
import math
import os
import sys

from etils import epath
import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import bert_conll2003
from configs import default
from configs import text_lm
from selffb import errors
from selffb import sharding
from selffb.data import conll
from selffb.data import lm as lm_data
from selffb.data import text
from selffb.data import tokenizers
from selffb.modes import train as train_mode
from selffb.tasks import lm
from selffb.tasks import ner
from selffb.train import validation

BERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'tiny_bert')
CONLL_TRAIN = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""
CONLL_VALID = """-DOCSTART- -X- -X- O

Blackburn NNP B-NP B-PER
in IN B-PP O
BRUSSELS NNP B-NP B-LOC
"""
CONLL_TEST = """Peter NNP B-NP B-PER
said VBD B-VP O

EU NNP B-NP B-ORG
"""


def write_conll(d, names=('train.txt', 'valid.txt', 'test.txt'), texts=None):
  os.makedirs(d, exist_ok=True)
  for name, text in zip(names, texts or (CONLL_TRAIN, CONLL_VALID, CONLL_TEST)):
    with open(os.path.join(d, name), 'w') as f:
      f.write(text)
  return str(d)


def ner_config(**labelled):
  c = default.get_config()
  c.data.task = 'ner'
  c.data.labelled.update(labelled)
  return c


@pytest.mark.parametrize('names', [('train.txt', 'valid.txt', 'test.txt'),
                                   ('eng.train', 'eng.testa', 'eng.testb')])
def test_conll_directory_loads_through_the_ner_task(tmp_path, names):
  d = write_conll(tmp_path / 'conll', names)
  c = ner_config(conll_dir=d)
  assert not conll.problems(c.data.labelled)
  splits = ner.load_splits(c, '')
  labels = splits['train'].labels
  assert labels == ('O', 'B-LOC', 'B-MISC', 'B-ORG', 'B-PER', 'I-PER')
  assert [len(s) for s in (splits['train'], splits['validation'], splits['test'])] == [3, 1, 2]
  first = splits['train'].__getitems__([0])[0]
  assert first['words'] == ['EU', 'rejects', 'German', 'call', '.']
  assert [labels[t] for t in first['tags']] == ['B-ORG', 'O', 'B-MISC', 'O', 'O']
  test = splits['test'].__getitems__([0, 1])
  assert [labels[t] for t in test[1]['tags']] == ['B-ORG']


def test_conll_paths_by_key_win_over_the_directory(tmp_path):
  d = write_conll(tmp_path / 'a')
  other = write_conll(tmp_path / 'b', texts=(CONLL_TRAIN, CONLL_TEST, CONLL_VALID))
  c = ner_config(conll_dir=d, validation_path=os.path.join(other, 'valid.txt'))
  splits = ner.load_splits(c, '')
  assert len(splits['validation']) == 2


@pytest.mark.parametrize('text, line, words', [
    ('EU NNP B-NP B-ORG\nrejects VBZ O\n', 2, '3 column'),
    ('EU NNP B-NP B-ORG\n\nrejects VBZ B-VP ORG\n', 3, "'ORG' is not O"),
    ('EU NNP B-NP B-ORG\n\n\nrejects VBZ B-VP O extra\n', 4, '5 column')])
def test_a_malformed_conll_line_is_an_error_naming_file_and_line(tmp_path, text, line, words):
  d = write_conll(tmp_path / 'c', texts=(text, CONLL_VALID, CONLL_TEST))
  with pytest.raises(errors.InputError, match=f'train.txt:{line}: .*{words}'):
    ner.load_splits(ner_config(conll_dir=d), '')


def test_a_validation_tag_outside_the_training_set_names_file_and_line(tmp_path):
  valid = CONLL_VALID + '\nRome NNP B-NP B-GPE\n'
  d = write_conll(tmp_path / 'c', texts=(CONLL_TRAIN, valid, CONLL_TEST))
  with pytest.raises(errors.InputError, match=r"valid.txt:7: tag 'B-GPE' is not in the train"):
    ner.load_splits(ner_config(conll_dir=d), '')


def test_conll_config_problems_name_the_missing_pieces(tmp_path):
  d = write_conll(tmp_path / 'c', ('train.txt', 'valid.txt'))
  found = conll.problems(ner_config(train_path=os.path.join(d, 'train.txt')).data.labelled)
  assert any('validation_path is empty' in p for p in found)
  assert any('test_path is empty' in p for p in found)
  assert conll.problems(ner_config(conll_dir=str(tmp_path / 'nope')).data.labelled)
  with pytest.raises(errors.InputError, match='has no test file .*eng.testb or test.txt'):
    ner.load_splits(ner_config(conll_dir=d), '')


@pytest.mark.e2e  # 20-50 s on 2 shared cores.
def test_bert_conll2003_fine_tunes_the_tiny_checkpoint_on_local_conll_files(tmp_path):
  d = write_conll(tmp_path / 'conll', ('eng.train', 'eng.testa', 'eng.testb'),
                  (CONLL_TRAIN * 8, CONLL_VALID, CONLL_TEST))
  c = bert_conll2003.get_config(BERT)
  c.data.labelled.conll_dir = d
  c.model.num_labels = 6
  c.data.update(batch_size=8, eval_batch_size=8, seq_len=32, data_dir=str(tmp_path / 'data'))
  c.train.update(num_steps=6, eval_every=3, checkpoint_every=6, log_every=2, patience=0)
  c.optim.update(warmup_steps=1, lr=1e-3)
  summary = train_mode.train_and_evaluate(c, str(tmp_path / 'run'))
  assert list(summary['report']['test']['tokens']['classes']) == [
      'O', 'B-LOC', 'B-MISC', 'B-ORG', 'B-PER', 'I-PER']
  assert np.isfinite(summary['report']['test']['scores']['f1'])


# WikiText-style split files and the document separator.

WIKI = """ 
 = Valkyria Chronicles III = 
 
 Senjō no Valkyria 3 is a tactical role @-@ playing game . 
 
 = = Gameplay = = 
 
 The game is played in turns . 
 
 = Tower Building of the Little Rock Arsenal = 
 
 The building is a tower . 
"""


def write_wikitext(d, copies=1):
  os.makedirs(d, exist_ok=True)
  for name in ('wiki.train.tokens', 'wiki.valid.tokens', 'wiki.test.tokens'):
    with open(os.path.join(d, name), 'w') as f:
      f.write(WIKI * (copies if name == 'wiki.train.tokens' else 1))
  return str(d)


def test_wikitext_headings_start_documents_and_sections_stay_inside():
  docs = text.documents(WIKI, 'wikitext_heading')
  assert len(docs) == 2
  assert docs[0].startswith(' = Valkyria Chronicles III = ') and 'Gameplay' in docs[0]
  assert docs[1].startswith(' = Tower Building') and ''.join(docs) == WIKI[2:]
  assert text.documents('a\nb\n\n \nc\n', 'blank_line') == ['a\nb', 'c\n']
  assert text.documents(WIKI, 'file') == [WIKI]


def test_split_files_are_the_splits_as_named(tmp_path):
  d = write_wikitext(tmp_path / 'wikitext')
  c = default.get_config()
  c.data.task, c.data.seq_len = 'text', 32
  c.data.text.update(train_paths=os.path.join(d, 'wiki.train.tokens'),
                     validation_paths=os.path.join(d, 'wiki.valid.tokens'),
                     test_paths=os.path.join(d, 'wiki.test.tokens'), separator='wikitext_heading')
  assert not lm.config_problems(c)
  splits = lm.load_splits(c, '')
  assert {k: len(v) for k, v in splits.items()} == {'train': 2, 'validation': 2, 'test': 2}
  assert splits['validation'].__getitems__([1])[0].startswith(' = Tower Building')
  assert 'wikitext_heading' in splits['train'].fingerprint
  c.data.text.update(validation_paths='', separator='page')
  found = lm.config_problems(c)
  assert any('needs config.data.text.validation_paths' in p for p in found)
  assert any("separator='page'" in p for p in found)


@pytest.mark.e2e  # 15-40 s on 2 shared cores.
def test_a_wikitext_directory_trains_text_lm_with_its_validation_file(tmp_path):
  d = write_wikitext(tmp_path / 'wikitext', copies=20)
  c = text_lm.get_config('byte')
  c.data.text.update(train_paths=os.path.join(d, 'wiki.train.tokens'),
                     validation_paths=os.path.join(d, 'wiki.valid.tokens'),
                     test_paths=os.path.join(d, 'wiki.test.tokens'),
                     separator='wikitext_heading', eval_sequences=8)
  c.model.update(num_layers=1, d_model=32, num_heads=2, mlp_dim=64)
  c.data.update(batch_size=8, eval_batch_size=8, seq_len=32, data_dir=str(tmp_path / 'data'))
  c.train.update(num_steps=4, eval_every=2, checkpoint_every=4, log_every=2)
  c.optim.warmup_steps = 1
  c.evals = ml_collections.ConfigDict({'test': {'type': 'teacher_forced', 'splits': 'test'}})
  summary = train_mode.train_and_evaluate(c, str(tmp_path / 'run'))
  assert summary['test']['test']['bits_per_byte'] > 0
  rows = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  val = [r for r in rows if 'val/bits_per_byte' in r]
  assert val and all(math.isclose(r['val/bits_per_byte'], r['val/ce'] / math.log(2), rel_tol=0,
                                  abs_tol=0.6) for r in val)


# Bits per byte.

def _eval_fn(params, batch):
  del params
  return lm.eval_sums({'logits': batch['logits']}, batch)


def _bpb(batch):
  mesh = sharding.make_mesh(default.get_config().mesh, jax.devices()[:1])
  return validation.evaluate(_eval_fn, None, [batch], mesh, lm.EVAL_KEYS + ('logits',))


def test_bits_per_byte_is_ce_over_ln2_per_byte_token_exactly():
  tok = tokenizers.ByteTokenizer()
  targets = tok.encode('héllo')[None]  # 6 bytes, all byte tokens.
  logits = np.random.default_rng(0).normal(size=targets.shape + (tok.vocab_size,))
  batch = {'inputs': np.ones_like(targets), 'targets': targets, 'logits': logits,
           'loss_mask': np.ones(targets.shape, np.float32), 'valid': np.ones(1, np.float32),
           'positions': np.arange(6)[None], 'segments': np.ones_like(targets)}
  batch['target_bytes'] = tok.target_bytes(batch['inputs'], targets)
  m = _bpb(batch)
  assert m['bits_per_byte'] == pytest.approx(m['ce'] / math.log(2), rel=1e-6)
  # The eos target's NLL counts, its bytes do not: bpb = 7 tokens' NLL over 6 bytes.
  targets = np.append(targets, [[tok.eos_id]], 1)
  logits = np.zeros(targets.shape + (tok.vocab_size,))  # NLL ln V per token.
  batch.update(targets=targets, logits=logits, inputs=np.ones_like(targets),
               loss_mask=np.ones(targets.shape, np.float32), positions=np.arange(7)[None],
               segments=np.ones_like(targets), target_bytes=tok.target_bytes(None, targets))
  assert _bpb(batch)['bits_per_byte'] == pytest.approx(7 * math.log2(tok.vocab_size) / 6)


def test_sentencepiece_target_bytes_sum_to_the_documents_utf8_bytes(tmp_path):
  docs = ['Grüße aus Köln, 42 times.\nA second line here.', 'naïve café — déjà vu ☃ ok']
  proto = tokenizers.train(docs * 30, {'vocab_size': 296, 'model_type': 'unigram',
                                       'character_coverage': 1.0, 'max_sentences': 1000,
                                       'byte_fallback': True}, str(tmp_path / 'sp.model'))
  tok = tokenizers.SentencePieceTokenizer(proto)
  for doc, ids in zip(docs, lm_data.encode_docs(docs, tok)):
    got = tok.target_bytes(ids[:-1], ids[1:])
    assert got.sum() == len(doc.encode('utf-8'))


def test_conll2003_is_prepared_in_process_without_tensorflow(tmp_path, monkeypatch):
  """tfds's conll2003 builder reads its download with no TensorFlow: with data.labelled.prepare
  the ner task writes it as ArrayRecord and reads it (the download is the test's files)."""
  d = write_conll(tmp_path / 'download')
  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      lambda self, url: epath.Path(d))
  c = ner_config(tfds_name='conll2003', validation_split='dev', prepare=True)
  c.data.data_dir = str(tmp_path / 'tfds')
  splits = ner.load_splits(c, '')
  assert [len(splits[s]) for s in ('train', 'validation', 'test')] == [3, 1, 2]
  assert splits['train'].labels[:3] == ('O', 'B-PER', 'I-PER')
  assert 'tensorflow' not in sys.modules
