"""A character-level CLIP tokenizer built in code.

The built-in models need a tokenizer without a download. This one is an
ordinary ``CLIPTokenizer`` whose vocabulary is the 256 byte-level characters
CLIP starts from (each also in its end-of-word form) and no merges, so every
word splits into single characters. The ids follow real CLIP's layout: the
byte characters first, then the ``</w>`` forms, then ``<|startoftext|>`` and
``<|endoftext|>`` last, so the end token has the highest id just as in CLIP.
Because it is a stock tokenizer written to ordinary files, diffusers pipelines
and ``save_pretrained``/``from_pretrained`` treat it like any other.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes.

    Printable ASCII and most of Latin-1 stand for themselves; the remaining
    bytes are shifted past 255 so that no byte maps to whitespace or a control
    character. This is the published GPT-2/CLIP mapping, in its byte order.
    """
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    # Order by byte value so id i is byte i, as in CLIP's vocabulary.
    by_byte = sorted(zip(keep, chars))
    return [chr(c) for _, c in by_byte]


def char_vocab() -> dict[str, int]:
    """Token -> id: bytes, their end-of-word forms, then the two specials."""
    alphabet = byte_level_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


def write_char_tokenizer_files(folder: Path) -> None:
    """Write vocab.json and merges.txt of the character tokenizer into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(char_vocab(), ensure_ascii=False), encoding="utf-8")
    # CLIP's loaders skip the first line of merges.txt as a version header.
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def build_char_tokenizer(folder: Path, *, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """Create the character tokenizer's files in folder and load them.

    pad_token: SD1 pads with the end token; SD2 and SDXL's second tokenizer
    pad with "!" (OpenCLIP's convention), which changes the padded ids the
    text encoder sees, so the built-ins copy it.
    """
    write_char_tokenizer_files(folder)
    # Loading through from_pretrained (rather than the constructor) is the
    # one path that works for both the slow and the fast CLIPTokenizer.
    return CLIPTokenizer.from_pretrained(str(folder), pad_token=pad_token, model_max_length=MODEL_MAX_LENGTH)


def vocab_size() -> int:
    """Number of ids the character tokenizer produces (text encoders' vocab_size)."""
    return len(char_vocab())


def bos_token_id() -> int:
    return char_vocab()[BOS_TOKEN]


def eos_token_id() -> int:
    return char_vocab()[EOS_TOKEN]


# T5's special tokens, in the ids real T5 gives them: pad 0, end 1, unknown 2.
T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def build_char_t5_tokenizer(*, model_max_length: int) -> object:
    """A T5 tokenizer over single characters, made in code (no sentencepiece model, no download).

    It is transformers' own T5 tokenizer class built from a unigram vocabulary:
    the three specials at T5's ids, the word-start marker, then every printable
    character, so any caption splits into characters and ends with ``</s>``.
    """
    import string

    from transformers import T5Tokenizer

    vocab = [(tok, 0.0) for tok in T5_SPECIALS] + [("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in string.printable if not c.isspace()]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def t5_vocab_size() -> int:
    import string

    return len(T5_SPECIALS) + 1 + sum(1 for c in string.printable if not c.isspace())
