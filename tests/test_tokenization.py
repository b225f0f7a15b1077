"""Tokenizers: each model trains, wraps in [CLS]/[SEP], pads with id 0, truncates, saves and loads."""

import json
import random

import pytest
from tokenizers import Tokenizer, models

from encoder_clf.data.tokenization import (
    CLS,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    TOKENIZER_MODELS,
    TokenizerConfig,
    _canonical_ids,
    encode,
    load_tokenizer,
    pad_id,
    train_tokenizer,
    word_starts,
)
from encoder_clf.errors import UsageError

MAX_LENGTH = 12
SUBJECTS = ["the movie", "this film", "the plot", "her performance", "the soundtrack", "every scene", "the ending"]
VERBS = ["was", "felt", "seemed", "is", "remains", "became"]
ADJECTIVES = ["wonderful", "boring", "surprisingly funny", "painfully slow", "bright", "dark and moody", "touching"]
TAILS = ["", "overall", "for me", "in the second half", "despite the cast", "honestly"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(0)
    sentences = []
    for i in range(200):
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(ADJECTIVES), rng.choice(TAILS)]
        sentence = " ".join(w for w in words if w) + rng.choice([".", "!", "?", "..."])
        sentences.append(sentence.capitalize() if i % 3 else sentence.upper())
    return sentences


@pytest.fixture(scope="module", params=list(TOKENIZER_MODELS))
def tokenizer(request, corpus) -> Tokenizer:
    config = TokenizerConfig(model=request.param, vocab_size=300, min_frequency=1, max_length=MAX_LENGTH)
    return train_tokenizer(corpus, config)


def long_text(corpus: list[str]) -> str:
    return " ".join(corpus[:10])


def test_special_tokens_are_in_the_vocabulary_and_pad_is_zero(tokenizer):
    assert tokenizer.token_to_id(PAD) == 0
    assert pad_id(tokenizer) == 0
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    assert None not in ids and len(set(ids)) == len(SPECIAL_TOKENS)
    assert tokenizer.get_vocab_size() <= 300


def test_every_encoding_is_wrapped_in_cls_and_sep(tokenizer, corpus):
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    for encoding in tokenizer.encode_batch(corpus[:20] + ["", "unseen xyzzy words"]):
        assert encoding.ids[0] == cls_id and encoding.ids[-1] == sep_id
        assert encoding.ids.count(cls_id) == 1 and encoding.ids.count(sep_id) == 1
        assert 0 not in encoding.ids  # padding is left to the batcher


def test_known_words_are_not_unknown(tokenizer, corpus):
    unk_id = tokenizer.token_to_id("[UNK]")
    assert all(unk_id not in ids for ids in encode(tokenizer, corpus)[0])


def test_truncation_is_applied_and_counted(tokenizer, corpus):
    texts = ["the movie", long_text(corpus), "boring", long_text(corpus[5:])]
    ids, truncated, _ = encode(tokenizer, texts)
    assert truncated == 2
    assert all(len(row) <= MAX_LENGTH for row in ids)
    for row in (ids[1], ids[3]):
        assert len(row) == MAX_LENGTH
        assert row[0] == tokenizer.token_to_id(CLS) and row[-1] == tokenizer.token_to_id(SEP)
    untruncated, none_cut, _ = encode(tokenizer, ["the plot", "dark"])
    assert none_cut == 0 and all(len(row) < MAX_LENGTH for row in untruncated)


@pytest.mark.parametrize("target", ["file", "directory"])
def test_save_and_load_round_trip(tokenizer, corpus, tmp_path, target):
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json" if target == "file" else tmp_path)
    texts = corpus + [long_text(corpus), "unseen xyzzy words"]
    assert encode(loaded, texts) == encode(tokenizer, texts)
    assert loaded.padding is None
    assert loaded.truncation["max_length"] == MAX_LENGTH


def test_load_with_max_length_sets_truncation(tokenizer, corpus, tmp_path):
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path, max_length=6)
    ids, truncated, _ = encode(loaded, [long_text(corpus)])
    assert truncated == 1 and len(ids[0]) == 6


@pytest.mark.parametrize("lowercase", [True, False])
def test_lowercase_setting(corpus, lowercase):
    config = TokenizerConfig(vocab_size=300, min_frequency=1, lowercase=lowercase)
    tok = train_tokenizer(corpus, config)
    same = tok.encode("THE MOVIE WAS BORING").ids == tok.encode("the movie was boring").ids
    assert same is lowercase


def test_pad_id_falls_back_to_zero_without_a_pad_token():
    tok = Tokenizer(models.WordLevel({"[UNK]": 5, "hello": 6}, unk_token="[UNK]"))
    assert pad_id(tok) == 0


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("absent.json", None, ["absent.json", "not found"]),
        ("", None, ["tokenizer.json", "not found"]),  # a directory without a tokenizer.json
        ("tokenizer.json", "{not json", ["tokenizer.json", "could not be read", "re-save it"]),
        ("t.json", '{"model": {"type": "Nope"}}', ["t.json", "could not be read"]),
    ],
    ids=["missing-file", "empty-directory", "not-json", "not-a-tokenizer"],
)
def test_load_tokenizer_refuses_bad_paths(tmp_path, name, content, fragments):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as err:
        load_tokenizer(path)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        ({"model": "sentencepiece"}, ["tokenizer.model must be one of", ", ".join(TOKENIZER_MODELS),
                                      "'sentencepiece'"]),
        ({"vocab_size": 99}, ["tokenizer.vocab_size must be >= 100", "99"]),
        ({"min_frequency": 0}, ["tokenizer.min_frequency must be >= 1", "0"]),
        ({"max_length": 3}, ["tokenizer.max_length must be >= 4", "3"]),
    ],
    ids=["model", "vocab_size", "min_frequency", "max_length"],
)
def test_invalid_config_is_refused(config, fragments):
    with pytest.raises(UsageError) as err:
        TokenizerConfig(**config)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("model", list(TOKENIZER_MODELS))
def test_every_model_is_a_valid_config(model):
    assert TokenizerConfig(model=model).model == model


def test_learned_tokens_are_numbered_in_a_fixed_order(tokenizer, corpus):
    """The trainers number the same tokens differently from run to run; ids are renumbered canonically."""
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    if isinstance(vocab, dict):  # scramble the learned tokens' ids, as another training run might
        learned = [t for t in vocab if vocab[t] >= 5]
        data["model"]["vocab"] = {**{t: vocab[t] for t in vocab if vocab[t] < 5},
                                  **{t: 5 + i for i, t in enumerate(reversed(learned))}}
    else:
        data["model"]["vocab"] = vocab[:5] + list(reversed(vocab[5:]))
    scrambled = _canonical_ids(Tokenizer.from_str(json.dumps(data)))
    assert scrambled.get_vocab() == tokenizer.get_vocab()
    assert [tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("model", list(TOKENIZER_MODELS))
def test_the_same_texts_train_the_same_tokenizer_every_time(model, corpus):
    """The WordPiece trainer broke ties between merges by hash-map order and the Unigram trainer's scores moved in
    their last digits: eight trainings on these texts gave up to seven vocabularies. Now one, given as a list or
    as a function that gives the texts afresh."""
    config = TokenizerConfig(model=model, vocab_size=100, min_frequency=1)
    texts = [*corpus, *(text.replace(" ", "") for text in corpus[:40])]  # long words: many pieces, many ties
    trained = {train_tokenizer(texts, config).to_str() for _ in range(7)}
    trained.add(train_tokenizer(lambda: iter(texts), config).to_str())
    assert len(trained) == 1


def test_wordpiece_pieces_given_to_the_trainer_stay_plain_tokens(corpus):
    """The one-character pieces are handed to the trainer as special tokens to number them; they must come out as
    ordinary vocabulary: split like any text, kept in decoding."""
    tokenizer = train_tokenizer(corpus, TokenizerConfig(vocab_size=100, min_frequency=1))
    data = json.loads(tokenizer.to_str())
    assert [added["content"] for added in data["added_tokens"]] == SPECIAL_TOKENS
    assert "##e" in tokenizer.get_vocab()
    assert tokenizer.encode("##e", add_special_tokens=False).tokens == ["[UNK]", "[UNK]", "e"]  # no "#" in the texts
    assert tokenizer.decode(tokenizer.encode("the movie").ids) == "the movie"


@pytest.mark.parametrize("name", list(TOKENIZER_MODELS))
def test_word_starts_mark_the_tokens_that_begin_a_word(name):
    """Joining each word start with the tokens after it, up to the next start, spells the text's words."""
    texts = [f"{s} {v} {a} {t}".strip() for s in SUBJECTS for v in VERBS for a in ADJECTIVES for t in TAILS[:2]]
    tokenizer = train_tokenizer(texts, TokenizerConfig(model=name, vocab_size=120, min_frequency=1))
    starts = word_starts(tokenizer)
    assert starts.shape == (tokenizer.get_vocab_size(),)
    assert starts[[tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]].all()
    assert 0 < (~starts).sum() < len(starts)  # a small vocabulary cuts words into pieces
    text = "the soundtrack seemed painfully slow honestly"
    ids = tokenizer.encode(text).ids[1:-1]
    words = []
    for token_id in ids:
        if starts[token_id] or not words:
            words.append([token_id])
        else:
            words[-1].append(token_id)
    assert [tokenizer.decode(word).strip() for word in words] == text.split()
