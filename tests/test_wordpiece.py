"""WordPieceTokenizer against the ids Hugging Face's BertTokenizerFast gives for the tiny BERT
checkpoint (tests/data/tiny_bert, written by tests/data/make_tiny_bert.py)."""
import json
import os
import shutil

import numpy as np
import pytest

from selffb import errors
from selffb.data import wordpiece

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'tiny_bert')


@pytest.fixture(scope='module')
def reference():
  with open(os.path.join(TINY, 'tokenizer_reference.json'), encoding='utf-8') as f:
    return json.load(f)


@pytest.fixture
def vocab_only(tmp_path):
  """The checkpoint's vocab.txt alone (no tokenizer.json, no tokenizer_config.json)."""
  shutil.copy(os.path.join(TINY, 'vocab.txt'), tmp_path)
  return str(tmp_path)


def ids(tokenizer, texts):
  return [tokenizer.encode(t).tolist() for t in texts]


@pytest.mark.parametrize('lowercase,key', [(False, 'cased'), (True, 'uncased')])
def test_vocab_txt_matches_hugging_face(vocab_only, reference, lowercase, key):
  tok = wordpiece.WordPieceTokenizer(vocab_only, lowercase=lowercase)
  assert ids(tok, reference['texts']) == reference[key]
  assert [e.tolist() for e in tok.encode_many(reference['texts'])] == reference[key]


def test_tokenizer_json_matches_hugging_face_cased(reference):
  tok = wordpiece.WordPieceTokenizer(TINY)
  assert ids(tok, reference['texts']) == reference['cased']
  assert reference['cased'] != reference['uncased']  # The two cases do differ on these texts.


def test_lowercase_follows_tokenizer_config(vocab_only, reference):
  assert ids(wordpiece.WordPieceTokenizer(vocab_only), reference['texts']) == reference['uncased']
  shutil.copy(os.path.join(TINY, 'tokenizer_config.json'), vocab_only)  # do_lower_case false.
  assert ids(wordpiece.WordPieceTokenizer(vocab_only), reference['texts']) == reference['cased']


def test_special_ids_and_prompt():
  tok = wordpiece.WordPieceTokenizer(TINY)
  with open(os.path.join(TINY, 'config.json'), encoding='utf-8') as f:
    assert tok.vocab_size == json.load(f)['vocab_size']
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.special_ids.dtype == np.int32 and tok.special_ids.tolist() == [0, 1, 2, 3, 4]
  prompt = tok.encode_prompt('the cat')
  assert prompt.dtype == np.int32 and prompt[0] == tok.bos_id
  assert prompt[1:].tolist() == tok.encode('the cat').tolist()


def test_decode_round_trips_and_stops_at_eos():
  tok = wordpiece.WordPieceTokenizer(TINY)
  text = 'she was walking to the lake'
  ids_ = tok.encode(text)
  assert [tok.tok.id_to_token(i) for i in ids_[2:4]] == ['walk', '##ing']  # A ## piece joined.
  assert tok.decode(ids_) == text
  tail = [tok.eos_id] + tok.encode('the dog').tolist()
  assert tok.decode([tok.bos_id, *ids_, *tail, tok.pad_id]) == text


def test_word_boundaries():
  tok = wordpiece.WordPieceTokenizer(TINY)
  starts, ends = tok.word_boundaries()
  assert starts.dtype == ends.dtype == bool and starts.shape == ends.shape == (tok.vocab_size,)
  vocab = tok.tok.get_vocab()
  assert not starts[[vocab['##ing'], vocab['##a'], vocab['##ed']]].any()
  assert starts[[vocab['the'], vocab['Berlin'], vocab['a'], vocab['.']]].all()
  assert ends.nonzero()[0].tolist() == tok.special_ids.tolist()
  pieces = tok.encode('walking')
  assert starts[pieces].tolist() == [True, False]


def test_missing_files_raise_input_error(tmp_path):
  with pytest.raises(errors.InputError, match='neither tokenizer.json nor vocab.txt'):
    wordpiece.WordPieceTokenizer(str(tmp_path))


def test_missing_special_token_raises_input_error(tmp_path):
  with open(os.path.join(TINY, 'vocab.txt'), encoding='utf-8') as f:
    vocab = [line for line in f if line.strip() != '[MASK]']
  with open(tmp_path / 'vocab.txt', 'w', encoding='utf-8') as f:
    f.writelines(vocab)
  with pytest.raises(errors.InputError, match=r"\[MASK\]"):
    wordpiece.WordPieceTokenizer(str(tmp_path))
