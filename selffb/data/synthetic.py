"""Generated labelled text that runs offline: sentences with person, location and organisation
spans tagged B-/I-/O (task 'ner'), and short reviews labelled negative / neutral / positive
(task 'classify'). Both need context: some names are people in one sentence and places in
another ('Paris', 'Jordan'), organisations are often named after people ('Jensen Labs'), and a
review's label follows negation and the clause after 'but'."""
import numpy as np

TAGS = ('O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC', 'B-ORG', 'I-ORG')
SENTIMENTS = ('negative', 'neutral', 'positive')

_FIRST = ('Anna Boris Chen Dara Elif Farid Greta Hiro Ines Jonas Kofi Lena Mateo Nadia Omar Priya '
          'Rosa Sven Tara Paris Jordan Florence').split()
_LAST = 'Berg Costa Dubois Fischer Garcia Haas Ito Jensen Kowalski Moreau Novak Okafor Silva'.split()
_PLACES = ('Lisbon Oslo Kyoto Nairobi Lima Quebec Zurich Cairo Perth Dublin Paris Jordan Florence '
           'Georgia').split()
_PLACES2 = ('New Delhi', 'Buenos Aires', 'San Diego', 'Cape Town', 'Hong Kong', 'Santa Fe')
_BRANDS = 'Acme Globex Initech Umbrella Hooli Vandelay Nimbus Orbit'.split()
_SUFFIX = 'Corp Labs Bank Group Airlines Motors'.split()
_TEMPLATES = (
    '{PER} works at {ORG} in {LOC} .', '{PER} flew to {LOC} on Monday .',
    '{ORG} opened an office in {LOC} .', 'yesterday {PER} met {PER} at the {ORG} office .',
    'the weather in {LOC} was cold .', '{PER} said that {ORG} will hire in {LOC} .',
    '{ORG} shares rose after {PER} spoke .', 'we visited {LOC} and {LOC} last year .',
    '{PER} joined {ORG} .', 'nobody from {ORG} came to {LOC} .', 'a letter from {PER} arrived .',
    'flights from {LOC} to {LOC} were late .', 'the mayor of {LOC} thanked {PER} .',
)


def _entity(rng, kind):
  """The words of one entity of `kind`."""
  if kind == 'PER':
    return [rng.choice(_FIRST)] + ([rng.choice(_LAST)] if rng.random() < 0.6 else [])
  if kind == 'LOC':
    return (rng.choice(_PLACES2).split() if rng.random() < 0.3 else [rng.choice(_PLACES)])
  name = rng.choice(_BRANDS) if rng.random() < 0.5 else rng.choice(_LAST)
  return [name] + ([rng.choice(_SUFFIX)] if rng.random() < 0.8 else [])


def ner_sentence(rng):
  """{'words': [...], 'tags': [tag ids into TAGS]} of one generated sentence (IOB2)."""
  words, tags = [], []
  for part in rng.choice(_TEMPLATES).split():
    if part.startswith('{'):
      kind = part[1:-1]
      span = _entity(rng, kind)
      words += span
      tags += [TAGS.index(f'B-{kind}')] + [TAGS.index(f'I-{kind}')] * (len(span) - 1)
    else:
      words.append(part)
      tags.append(0)
  return {'words': [str(w) for w in words], 'tags': tags}


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


def review(rng):
  """{'text': ..., 'label': index into SENTIMENTS}: one clause, or two joined by 'but' (the
  second decides) or 'and' (the first non-neutral decides)."""
  words, polarity = _clause(rng)
  if rng.random() < 0.4:
    joiner = 'but' if rng.random() < 0.5 else 'and'
    more, second = _clause(rng)
    words += [joiner] + more
    polarity = second if joiner == 'but' or polarity == 0 else polarity
  return {'text': ' '.join(str(w) for w in words) + ' .', 'label': polarity + 1}


def examples(make, seed, counts, salt):
  """{split: records} with `counts` ({split: n}) records made by `make(rng)`; the validation
  and test splits hold no training example and no copy of each other's."""
  rng = np.random.default_rng([seed, salt])
  key = lambda r: repr(sorted(r.items()))
  seen, out = set(), {}
  for name in ('test', 'validation', 'train'):
    made = []
    tries = 0
    while len(made) < counts[name]:
      r = make(rng)
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
