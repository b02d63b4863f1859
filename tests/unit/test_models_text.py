"""CLIP text side: the BPE tokenizer's ids in open_clip's layout, and the stand-in text tower (shapes, ONNX)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from taxonstream.models.clip_standin import TextTowerConfig, build_clip_text_standin  # noqa: E402
from taxonstream.models.contract import CLIP_TEXT  # noqa: E402
from taxonstream.models.onnx_export import export_onnx, max_abs_difference  # noqa: E402
from taxonstream.models.tokenizer import ClipTokenizer, ensure_vocab, write_vocab_files  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer()  # fetches the vocabulary once per machine (cached under .stack/tokenizer)


def test_vocabulary_files_have_clips_layout() -> None:
    directory = ensure_vocab()
    vocab = json.loads((directory / "vocab.json").read_text())
    assert len(vocab) == 49408
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (49406, 49407)
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # bytes, then bytes closing a word
    merges = (directory / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and len(merges) == 1 + 48894
    assert ensure_vocab() == directory  # a second call finds it done


def test_known_ids(tokenizer: ClipTokenizer) -> None:
    # CLIP's ids for these texts (as open_clip's tokenizer gives them): start, words, end, zero padding.
    ids = tokenizer(["hello world", "a photo of a moth."])
    assert ids.shape == (2, 77) and ids.dtype == np.int64
    assert ids[0, :4].tolist() == [49406, 3306, 1002, 49407]
    # Whole words are single tokens ending in "</w>"; the full stop is a word of its own.
    vocab = json.loads((ensure_vocab() / "vocab.json").read_text())
    words = [vocab[w + "</w>"] for w in ["a", "photo", "of", "a", "moth", "."]]
    assert ids[1, :8].tolist() == [49406, *words, 49407]
    assert not ids[0, 4:].any() and not ids[1, 8:].any()


def test_case_and_whitespace_do_not_matter(tokenizer: ClipTokenizer) -> None:
    np.testing.assert_array_equal(tokenizer(["Danaus  plexippus"]), tokenizer(["danaus plexippus"]))


def test_long_text_is_cut_to_77_and_still_ends(tokenizer: ClipTokenizer) -> None:
    ids = tokenizer(["moth " * 200])[0]
    assert ids[0] == 49406 and ids[-1] == 49407 and (ids[1:-1] != 0).all()
    assert int(ids.argmax()) == 76  # the text tower reads its embedding here


def test_write_vocab_files_from_a_tiny_bpe_file(tmp_path: Path) -> None:
    # A merges file of the wrong length is refused rather than giving silently shifted ids.
    data = gzip.compress(b"#version: 0.2\nt h\nth e</w>\n")
    with pytest.raises(RuntimeError, match="vocabulary size"):
        write_vocab_files(data, tmp_path / "vocab")


def test_text_tower_shape_seed_and_pooling_at_end_of_text() -> None:
    tower = build_clip_text_standin()
    ids = torch.zeros(3, 77, dtype=torch.int64)
    ids[:, 0] = 49406
    ids[0, 1:3] = torch.tensor([3306, 49407])
    ids[1, 1:3] = torch.tensor([1002, 49407])
    ids[2, 1:4] = torch.tensor([3306, 1002, 49407])
    with torch.no_grad():
        out = tower(ids)
    assert tuple(out.shape) == (3, *CLIP_TEXT.outputs[0].dims) == (3, 512)
    assert not torch.allclose(out[0], out[1])
    # Causal: the embedding at the end token sees only what precedes it, so a token after it changes nothing.
    later = ids.clone()
    later[0, 5] = 777
    with torch.no_grad():
        assert torch.allclose(tower(later)[0], out[0], atol=1e-6)
    again = build_clip_text_standin().state_dict()
    assert all(torch.equal(v, again[k]) for k, v in tower.state_dict().items())
    other = build_clip_text_standin(TextTowerConfig(seed=1)).state_dict()
    assert not torch.equal(other["text_projection"], again["text_projection"])


def test_text_tower_onnx_matches_torch(tmp_path: Path, tokenizer: ClipTokenizer) -> None:
    tower = build_clip_text_standin()
    example = torch.from_numpy(tokenizer(["x"]))
    path = export_onnx(tower, [example], tmp_path / "text.onnx", ["input_ids"], ["embeddings"])
    feeds = {"input_ids": tokenizer(["a photo of Danaus plexippus.", "moth " * 100, "bee", ""])}
    assert max_abs_difference(tower, path, feeds)["embeddings"] < 1e-4


OPEN_CLIP_IDS = Path(__file__).parent / "data" / "open_clip_token_ids.json"


def test_ids_equal_open_clips_on_its_reference_texts(tokenizer: ClipTokenizer) -> None:
    # open_clip 3.3.0's SimpleTokenizer ids (how they were made: the fixture's "note"), curly quotes,
    # ligatures, full-width letters, HTML entities, mojibake and special-token spellings among them.
    cases = json.loads(OPEN_CLIP_IDS.read_text())["cases"]
    assert len(cases) >= 30
    ours = tokenizer([case["text"] for case in cases])
    differing = [case["text"] for case, row in zip(cases, ours, strict=True) if row.tolist() != case["ids"]]
    assert differing == []


def test_cleaning_is_open_clips(tokenizer: ClipTokenizer) -> None:
    # ftfy's fixes and HTML unescaping happen before BPE, so these spell the same words.
    for messy, plain in [
        ("moth\u2019s wing", "moth's wing"),
        ("\ufb01nch", "finch"),
        ("\uff21\uff50\uff49\uff53", "apis"),
        ("bees &amp;amp; wasps", "bees & wasps"),
    ]:
        np.testing.assert_array_equal(tokenizer([messy]), tokenizer([plain]))


def test_end_token_spelled_in_a_label_is_text(tokenizer: ClipTokenizer) -> None:
    ids = tokenizer(["a <|endoftext|> b"])[0]
    assert int((ids == tokenizer.end_id).sum()) == 1  # only the one open_clip adds at the end
    assert int(ids.argmax()) == int(np.flatnonzero(ids).max())
