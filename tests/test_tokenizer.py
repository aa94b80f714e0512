"""Byte-level BPE: exact round trip on any Unicode, special tokens, size checks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.data import tokenizer as tok_lib

CORPUS = ["def foo(x):\n    return x + 1\n", "héllo wörld ✓ 日本語", "class A:\n    pass\n"] * 20


@pytest.fixture(scope="module")
def tok():
  return tok_lib.train_bpe(CORPUS, 320)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(text=st.text())
def test_encode_then_decode_is_identity_for_any_unicode(tok, text):
  assert tok_lib.decode(tok, tok_lib.encode(tok, text)) == text


def test_special_tokens_exist_and_differ(tok):
  assert tok_lib.special_id(tok, tok_lib.EOT) != tok_lib.special_id(tok, tok_lib.PAD)


def test_merges_shorten_the_training_text(tok):
  text = CORPUS[0]
  assert len(tok_lib.encode(tok, text)) < len(text.encode())


def test_vocab_size_is_respected(tok):
  assert tok.get_vocab_size() <= 320


def test_vocab_smaller_than_bytes_plus_specials_is_refused():
  with pytest.raises(ValueError, match="data.vocab_size=200 is too small"):
    tok_lib.train_bpe(CORPUS, 200)


def test_save_and_load_round_trip(tok, tmp_path):
  tok_lib.save(tok, str(tmp_path))
  again = tok_lib.load(str(tmp_path))
  assert again.encode("def x").ids == tok.encode("def x").ids


def test_roles_of_an_imported_tokenizer_survive_save_and_load(tmp_path):
  from tokenizers import Tokenizer, models

  tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, unk_token="<unk>"))
  tok_lib.set_roles(tok, pad="<unk>", bos="<s>")  # no end-of-text token named
  tok_lib.save(tok, str(tmp_path))
  back = tok_lib.load(str(tmp_path))  # loads although "<|endoftext|>" is missing
  assert tok_lib.special_id(back, tok_lib.PAD) == 0
  assert tok_lib.start_ids(back) == [1]
  with pytest.raises(ValueError, match="no special token '<\\|endoftext\\|>'"):
    tok_lib.special_id(back, tok_lib.EOT)
  tok_lib.set_roles(back, eot="</s>", pad="<unk>", bos="<s>")
  assert tok_lib.special_id(back, tok_lib.EOT) == 2
  with pytest.raises(ValueError, match="no token 'x'"):
    tok_lib.set_roles(back, eot="x")


def test_a_text_starts_after_end_of_text_natively_and_with_nothing_when_imported_without_bos(
    tok, tmp_path):
  """llmlab's own documents follow an end-of-text; an imported tokenizer that adds no BOS (NO_BOS)
  starts a text with nothing, as its Hugging Face tokenizer does, also after save and load."""
  assert tok_lib.start_ids(tok) == [tok_lib.special_id(tok, tok_lib.EOT)]
  tok_lib.save(tok, str(tmp_path))
  imported = tok_lib.load(str(tmp_path))  # a copy: the fixture is shared
  tok_lib.set_roles(imported, bos=tok_lib.NO_BOS)
  tok_lib.save(imported, str(tmp_path))
  assert tok_lib.start_ids(tok_lib.load(str(tmp_path))) == []
