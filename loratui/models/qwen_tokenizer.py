"""A character-level Qwen tokenizer built in code, for the built-ins whose text encoder is a Qwen LM.

It is transformers' own ``Qwen2Tokenizer`` (byte-level BPE, Qwen's pre-tokenizer)
over the 256 byte-level characters and no merges, so any text splits into single
bytes; ``<|endoftext|>`` (the padding) and the chat markers ``<|im_start|>`` /
``<|im_end|>`` come after them as Qwen's special tokens. Its chat template writes
one conversation turn exactly as Qwen's published template does for a plain user
message (``<|im_start|>user\\n…<|im_end|>\\n``, then ``<|im_start|>assistant\\n``
when a generation prompt is asked for), which is all the image pipelines use.

``words`` adds byte-pair merges that make each given word one token, as Qwen's real
vocabulary does for common words; Qwen-Image's built-in uses it so that its prompt
template's system prefix is 34 tokens long, as with Qwen's tokenizer, and the
pipeline's fixed cut of 34 tokens removes exactly that prefix.
"""

from __future__ import annotations

from typing import Any

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Left-to-right merges building each word (byte-level: a leading space is "Ġ") out of its characters."""
    merges: list[tuple[str, str]] = []
    for word in words:
        text = word.replace(" ", "\u0120")
        for end in range(2, len(text) + 1):
            pair = (text[:end - 1], text[end - 1])
            if pair not in merges:
                merges.append(pair)
    return merges


def vocab(words: tuple[str, ...] = ()) -> dict[str, int]:
    from loratui.models.tokenizer import byte_level_alphabet

    tokens = byte_level_alphabet() + list(SPECIALS)
    tokens += [a + b for a, b in _merges(words) if a + b not in tokens]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def vocab_size(words: tuple[str, ...] = ()) -> int:
    return len(vocab(words))


def pad_token_id() -> int:
    return vocab()["<|endoftext|>"]


def build_qwen_tokenizer(*, model_max_length: int, words: tuple[str, ...] = ()) -> Any:
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(vocab=vocab(words), merges=_merges(words), model_max_length=model_max_length,
                         errors="replace", unk_token=None, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok
