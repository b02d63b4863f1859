"""CLIP's BPE tokenizer (open_clip / BioCLIP): 77 token ids per text, the same ids open_clip 3.x gives.

The BPE is the `tokenizers` library's, taken from transformers' `CLIPTokenizer` loaded from a local
folder; nothing is fetched from a model hub. Its vocabulary is CLIP's `bpe_simple_vocab_16e6.txt.gz`, the
file open_clip ships inside its PyPI wheel: `ensure_vocab` downloads that one wheel with pip (pinned,
hash-checked, no dependencies, never installed), takes the file out and writes the `vocab.json` and
`merges.txt` that `CLIPTokenizer` reads, under `$TAXONSTREAM_STACK_DIR/tokenizer/` (`.stack/` by default;
`TAXONSTREAM_TOKENIZER_DIR` overrides). It runs once per machine; later calls only check a marker file.

Why not open_clip's own tokenizer: open_clip needs torchvision, which has no CPU build here. Why not a
hand-written BPE: transformers' is maintained and is what Hugging Face's CLIP checkpoints use.

Text goes through open_clip's own steps (its `SimpleTokenizer`, clean="lower"), not CLIPTokenizer's,
whose normalisation differs (no ftfy, no HTML unescaping, `<|endoftext|>` in a label read as the special
token): `ftfy.fix_text` (mojibake, curly quotes, ligatures, full-width letters), `html.unescape` twice,
whitespace collapsed, lowercase; then open_clip's split into pieces, where the only special tokens are
open_clip 3.x's own spellings `<start_of_text>` / `<end_of_text>` (ids 49406 / 49407) — `<|endoftext|>`
typed in a label is text. tests/unit/data/open_clip_token_ids.json holds open_clip 3.3.0's ids for 32
texts, and tests/unit/test_models_text.py checks ours equal them.

The ids follow open_clip's layout, which the text tower's pooling relies on: start (49406), the tokens,
end (49407, the largest, where the tower reads the embedding), then zeros up to 77; a text longer than
that is cut and still ends with the end token.
"""

from __future__ import annotations

import fcntl
import gzip
import html
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import numpy as np

from .contract import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE

OPEN_CLIP_WHEEL = "open_clip_torch==3.3.0"
OPEN_CLIP_WHEEL_SHA256 = "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce"
VOCAB_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGES = CLIP_VOCAB_SIZE - 256 - 256 - 2  # 48894: the vocabulary is bytes, bytes + "</w>", merges, 2 specials
START, END = "<|startoftext|>", "<|endoftext|>"
# open_clip 3.x names its special tokens this way (same ids 49406/49407); in a text only these are special.
OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
# open_clip's split of cleaned text: its specials, English contractions, letter runs, single digits, other runs.
PIECE_PATTERN = "|".join(OPEN_CLIP_SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_MARKER = ".complete"


class VocabularyUnavailable(RuntimeError):
    pass


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]  # services/taxonstream/models/tokenizer.py -> the repository


def vocab_dir() -> Path:
    if os.environ.get("TAXONSTREAM_TOKENIZER_DIR"):
        return Path(os.environ["TAXONSTREAM_TOKENIZER_DIR"]).resolve()
    stack = Path(os.environ.get("TAXONSTREAM_STACK_DIR", _repo_root() / ".stack"))
    return (stack / "tokenizer" / "clip-bpe-16e6").resolve()


def _download_wheel(downloads: Path) -> Path:
    found = sorted(downloads.glob("open_clip_torch-3.3.0-*.whl"))
    if not found:
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as requirements:
            requirements.write(f"{OPEN_CLIP_WHEEL} --hash=sha256:{OPEN_CLIP_WHEEL_SHA256}\n")
        try:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--require-hashes",
                    "-q",
                    "--disable-pip-version-check",
                    "-d",
                    str(downloads),
                    "-r",
                    requirements.name,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            os.unlink(requirements.name)
        found = sorted(downloads.glob("open_clip_torch-3.3.0-*.whl"))
        if result.returncode != 0 or not found:
            raise VocabularyUnavailable(f"pip download {OPEN_CLIP_WHEEL} failed: {result.stderr.strip()[-500:]}")
    return found[0]


def write_vocab_files(bpe_gz: bytes, out: Path) -> None:
    """vocab.json + merges.txt (Hugging Face's CLIP layout) from CLIP's bpe_simple_vocab_16e6.txt.gz bytes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = lines[1 : MERGES + 1]  # line 0 is a version header
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m.split()) for m in merges] + [START, END]
    if len(tokens) != CLIP_VOCAB_SIZE:
        raise VocabularyUnavailable(f"unexpected vocabulary size {len(tokens)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def ensure_vocab(directory: Path | None = None) -> Path:
    """The folder holding vocab.json and merges.txt, created (download + extract) if missing. Idempotent."""
    directory = directory or vocab_dir()
    if (directory / _MARKER).is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with (directory.parent / f".{directory.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / _MARKER).is_file():
            wheel = _download_wheel(directory.parent / "downloads")
            with zipfile.ZipFile(wheel) as archive:
                write_vocab_files(archive.read(VOCAB_MEMBER), directory)
            (directory / _MARKER).write_text(f"{OPEN_CLIP_WHEEL} {VOCAB_MEMBER}\n")
    return directory


@lru_cache(maxsize=4)
def _tokenizer(directory: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never ask a hub
    from transformers import CLIPTokenizer

    # No length limit here: ClipTokenizer cuts to 77 itself, the open_clip way (and without a warning per text).
    return CLIPTokenizer.from_pretrained(directory, model_max_length=1 << 30)


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, HTML entities unescaped twice, whitespace collapsed, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """texts -> int64 [N, 77] token ids in open_clip's layout, equal to open_clip's SimpleTokenizer."""

    def __init__(self, directory: Path | None = None) -> None:
        from tokenizers import Regex, pre_tokenizers

        self.directory = ensure_vocab(directory)
        self.backend = _tokenizer(str(self.directory))
        self.start_id = int(self.backend.convert_tokens_to_ids(START))
        self.end_id = int(self.backend.convert_tokens_to_ids(END))
        self._specials = dict(zip(OPEN_CLIP_SPECIALS, (self.start_id, self.end_id), strict=True))
        self._pieces = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="removed", invert=True)
        self._bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self._bpe = self.backend.backend_tokenizer.model
        self._piece_ids = lru_cache(maxsize=65536)(self._encode_piece)  # labels repeat words (genus, "photo")

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        if (special := self._specials.get(piece)) is not None:
            return (special,)
        ((as_bytes, _),) = self._bytes.pre_tokenize_str(piece)  # UTF-8 bytes as CLIP's byte alphabet
        return tuple(token.id for token in self._bpe.tokenize(as_bytes))

    def encode(self, text: str) -> list[int]:
        """The ids of one text, without the start and end tokens."""
        return [i for piece, _ in self._pieces.pre_tokenize_str(clean(text)) for i in self._piece_ids(piece)]

    def __call__(self, texts: Sequence[str], context_length: int = CLIP_CONTEXT_LENGTH) -> np.ndarray:
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > context_length:  # open_clip cuts and keeps the end token as the last one
                ids = [*ids[: context_length - 1], self.end_id]
            out[row, : len(ids)] = ids
        return out
