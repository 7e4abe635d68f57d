"""Generated labelled text that runs offline: sentences with person, location and organisation
spans tagged B-/I-/O (task 'ner'), and short reviews labelled negative / neutral / positive
(task 'classify'). Both need context. The names are invented, and the validation and test
sentences use names no training sentence has, so a tagger must read an entity's type from its
context and shape ('flew to X', 'X Labs', 'Port X'), not remember names; a few contexts leave the
type open ('a letter from X arrived'). A review's label follows negation and the clause after
'but'."""
import numpy as np

TAGS = ('O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC', 'B-ORG', 'I-ORG')
SENTIMENTS = ('negative', 'neutral', 'positive')

_SYLLABLES = 'ka lo mi ra to ne su vi da re an el or is ul be go fa pe zo ti mar len dor'.split()
_TEMPLATES = (
    '{PER} works at {ORG} in {LOC} .', '{PER} flew to {LOC} on Monday .',
    '{ORG} opened an office in {LOC} .', 'yesterday {PER} met {PER} at the {ORG} office .',
    'the weather in {LOC} was cold .', '{PER} said that {ORG} will hire in {LOC} .',
    '{ORG} shares rose after {PER} spoke .', 'we visited {LOC} and {LOC} last year .',
    '{PER} joined {ORG} .', 'nobody from {ORG} came to {LOC} .', 'a letter from {ANY} arrived .',
    'flights from {LOC} to {LOC} were late .', 'the mayor of {LOC} thanked {PER} .',
    '{PER} and {PER} live near {LOC} .', 'talks between {ORG} and {ORG} ended .',
    'she wrote to {PER} about {ANY} .', '{PER} , who runs {ORG} , resigned .',
)


def _names(n=800):
  """Invented capitalised names, the same on every machine."""
  rng, out = np.random.default_rng(7), set()
  while len(out) < n:
    out.add(''.join(rng.choice(_SYLLABLES, int(rng.integers(2, 4)))).capitalize())
  return sorted(out)


NAMES = _names()
HELD_OUT = frozenset(NAMES[i] for i in range(len(NAMES)) if i % 4 == 0)  # Validation and test.


def _entity(rng, kind, names):
  """The words of one entity of `kind`, from `names`."""
  name = lambda: str(rng.choice(names))
  if kind == 'PER':
    return [name()] + ([name()] if rng.random() < 0.6 else [])
  if kind == 'LOC':
    r = rng.random()
    return ([rng.choice(['Port', 'New', 'San']), name()] if r < 0.2 else
            [name(), 'City'] if r < 0.3 else [name()])
  suffix = rng.choice(['Corp', 'Labs', 'Bank', 'Group', 'Airlines', 'Motors'])
  return [name()] + ([str(suffix)] if rng.random() < 0.8 else [])


def ner_sentence(rng, split='train'):
  """{'words': [...], 'tags': [tag ids into TAGS]} of one generated sentence (IOB2); names of
  the training split, or held-out ones for the others."""
  names = [n for n in NAMES if (n in HELD_OUT) == (split != 'train')]
  words, tags = [], []
  for part in str(rng.choice(_TEMPLATES)).split():
    if part.startswith('{'):
      kind = part[1:-1] if part != '{ANY}' else str(rng.choice(['PER', 'LOC', 'ORG']))
      span = _entity(rng, kind, names)
      words += span
      tags += [TAGS.index(f'B-{kind}')] + [TAGS.index(f'I-{kind}')] * (len(span) - 1)
    else:
      words.append(part)
      tags.append(0)
  return {'words': words, 'tags': tags}


_NOUNS = 'food service room movie book phone trip show coffee staff'.split()
_GOOD = 'good great lovely excellent fine superb'.split()
_BAD = 'bad awful terrible poor dull rude'.split()
_PLAIN = 'new long blue quiet small open'.split()


def _clause(rng):
  """(words, polarity -1/0/1) of 'the NOUN was [not] [very] ADJ'."""
  kind = rng.integers(3)
  adj = rng.choice((_BAD, _PLAIN, _GOOD)[kind])
  polarity = (-1, 0, 1)[kind]
  negated = polarity != 0 and rng.random() < 0.3
  words = ['the', rng.choice(_NOUNS), 'was'] + (['not'] if negated else []) + (
      ['very'] if rng.random() < 0.3 else []) + [adj]
  return words, -polarity if negated else polarity


def review(rng, split='train'):
  """{'text': ..., 'label': index into SENTIMENTS}: one clause, or two joined by 'but' (the
  second decides) or 'and' (the first non-neutral decides); every split draws alike."""
  del split
  words, polarity = _clause(rng)
  if rng.random() < 0.4:
    joiner = 'but' if rng.random() < 0.5 else 'and'
    more, second = _clause(rng)
    words += [joiner] + more
    polarity = second if joiner == 'but' or polarity == 0 else polarity
  return {'text': ' '.join(str(w) for w in words) + ' .', 'label': polarity + 1}


def examples(make, seed, counts, salt):
  """{split: records} with `counts` ({split: n}) records made by `make(rng, split)`; the validation
  and test splits hold no training example and no copy of each other's."""
  rng = np.random.default_rng([seed, salt])
  key = lambda r: repr(sorted(r.items()))
  seen, out = set(), {}
  for name in ('test', 'validation', 'train'):
    made = []
    tries = 0
    while len(made) < counts[name]:
      r = make(rng, name)
      tries += 1
      if tries > 100 * counts[name] + 1000:
        raise ValueError(f'could not make {counts[name]} distinct {name} examples; lower '
                         'config.data.labelled.num_test / num_validation.')
      if name == 'train':
        if key(r) not in seen:
          made.append(r)
      elif key(r) not in seen:
        seen.add(key(r))
        made.append(r)
    out[name] = made
  return out
