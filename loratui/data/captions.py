"""Caption files: finding, reading (whatever the encoding), writing, and building
the text the text encoder actually sees (trigger word, tag shuffle, dropout)."""

from __future__ import annotations

import codecs
import os
import random
import re
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

CAPTION_EXTENSIONS = (".txt", ".caption")

# CLIP's context is 77 tokens: a begin and an end token around 75 of text.
CLIP_MAX_TOKENS = 75

Tokenize = Callable[[str], int]


@dataclass
class CaptionText:
    text: str
    notes: list[str] = field(default_factory=list)


@dataclass
class FoundCaption:
    path: Path  # where the caption is, or where it should be written
    exists: bool
    note: str | None = None  # set when the other extension was used


def _normalise_extension(extension: str) -> str:
    extension = extension.strip()
    return extension if extension.startswith(".") else f".{extension}"


def find_caption(image_path: Path | str, extension: str = ".txt") -> FoundCaption:
    """Look for the caption of ``image_path``: same folder, same stem.

    kohya's default extension is ``.caption`` while most taggers write
    ``.txt``, and people mix the two up; when the configured one is missing,
    the other is used and a note says so.
    """
    image_path = Path(image_path)
    extension = _normalise_extension(extension)
    wanted = image_path.with_suffix(extension)
    if wanted.is_file():
        return FoundCaption(wanted, True)
    if extension in CAPTION_EXTENSIONS:
        other_ext = CAPTION_EXTENSIONS[1 - CAPTION_EXTENSIONS.index(extension)]
        other = image_path.with_suffix(other_ext)
        if other.is_file():
            note = (
                f"caption read from {other.name} because {wanted.name} does not exist "
                f"(the configured caption extension is {extension})"
            )
            return FoundCaption(other, True, note)
    return FoundCaption(wanted, False)


def caption_path_for(image_path: Path | str, extension: str = ".txt") -> Path:
    """The caption file of ``image_path``: the existing one (either extension)
    or, when there is none, the path a new caption should be written to."""
    return find_caption(image_path, extension).path


# ---------------------------------------------------------------------------
# Reading


def _decode_bytes(data: bytes) -> tuple[str, str | None]:
    """(text, note or None) for caption bytes in any common encoding."""
    for bom, codec, name in (
        (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
        (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
        (codecs.BOM_UTF8, "utf-8-sig", None),  # Notepad's BOM is harmless; no note
        (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
        (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
    ):
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                break
            return text, (f"caption file is {name}; read as such" if name else None)
    # UTF-16 without a BOM: ASCII text leaves every other byte zero.
    if len(data) >= 4 and len(data) % 2 == 0 and data.count(b"\x00") * 2 >= len(data) * 0.9:
        codec = "utf-16-le" if data[1::2].count(0) > data[0::2].count(0) else "utf-16-be"
        try:
            return data.decode(codec), "caption file is UTF-16 without a byte-order mark; read as such"
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    # Windows-1252 is what Notepad wrote before UTF-8 and is a superset of the
    # printable Latin-1 range; pure Latin-1 catches its 5 undefined bytes.
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text, "caption file is not UTF-8; read as Latin-1/Windows-1252 (save it as UTF-8 to be sure)"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")


def clean_caption(text: str) -> tuple[str, list[str]]:
    """Strip, and join multi-line captions into one line.

    Lines are joined with ", " rather than spaces: a second line is almost
    always another tag list or a separate sentence, and a comma keeps it a
    separate tag for shuffling (kohya reads only the first line, which
    silently drops the rest).
    """
    notes: list[str] = []
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        notes.append("caption had control characters; removed")
    lines = [_SPACES.sub(" ", line).strip().strip(",").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > 1:
        notes.append(f"caption had {len(lines)} lines; joined with ', '")
    return ", ".join(lines), notes


def read_caption(path: Path | str) -> CaptionText:
    """Read one caption file in whatever encoding it was saved in.

    Raises OSError (e.g. PermissionError) when the file cannot be read; the
    caller decides whether that skips the image.
    """
    data = Path(path).read_bytes()
    text, note = _decode_bytes(data)
    notes = [note] if note else []
    text, clean_notes = clean_caption(text)
    notes.extend(clean_notes)
    if not text:
        notes.append("caption file is empty")
    return CaptionText(text, notes)


# ---------------------------------------------------------------------------
# Writing


def write_caption(path: Path | str, text: str) -> None:
    """Write ``text`` as UTF-8, atomically: a crash leaves the old caption or the
    new one, never half of one.  An existing file keeps its permission bits."""
    path = Path(path)
    directory = path.parent
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every filesystem allows it; the data itself is already synced
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Building the training caption


def split_tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def has_trigger(text: str, trigger_word: str) -> bool:
    """True when ``trigger_word`` is in ``text`` as a whole tag or whole words.

    "sks" counts in "sks, dog" and in "photo of sks dog" but not in "sksx".
    """
    trigger = trigger_word.strip()
    if not trigger:
        return True
    pattern = r"(?<![\w])" + re.escape(trigger) + r"(?![\w])"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def build_caption(
    raw: str,
    *,
    trigger_word: str = "",
    shuffle_tags: bool = False,
    keep_tokens: int = 1,
    dropout: float = 0.0,
    rng: random.Random,
) -> str:
    """The caption for one training step.

    Dropout (an empty caption, so the LoRA also learns unconditioned) is drawn
    first, then the trigger word is prepended when missing, then tags after
    the first ``keep_tokens`` are shuffled.  The same ``rng`` state gives the
    same caption.
    """
    if dropout > 0.0 and rng.random() < dropout:
        return ""
    text = raw.strip()
    trigger = trigger_word.strip()
    if trigger and not has_trigger(text, trigger):
        text = f"{trigger}, {text}" if text else trigger
    if not shuffle_tags:
        return text
    tags = split_tags(text)
    keep = max(0, keep_tokens)
    head, tail = tags[:keep], tags[keep:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """How often each comma-separated tag occurs, for ``ss_tag_frequency``."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(split_tags(caption))
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _clean_prefix(prefix: str) -> str:
    return prefix.strip().strip(",").strip()


def apply_prefix(text: str, prefix: str, remove: bool = False) -> str:
    """Add ``prefix`` as the first tag of ``text``, or take it away.

    Adding is idempotent (a caption that already starts with the prefix is
    unchanged); removing only touches a leading tag equal to the prefix.
    """
    prefix = _clean_prefix(prefix)
    text = text.strip()
    if not prefix:
        return text
    tags = split_tags(text)
    starts_with = bool(tags) and tags[0].casefold() == prefix.casefold()
    if remove:
        if not starts_with:
            return text
        rest = text.split(",", 1)[1] if "," in text else ""
        return rest.strip()
    if starts_with:
        return text
    return f"{prefix}, {text}" if text else prefix


# ---------------------------------------------------------------------------
# Token counting


_ROUGH_TOKEN = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")


def count_tokens_estimate(text: str) -> int:
    """A rough CLIP token count without the tokenizer.

    CLIP's BPE gives common words one token, splits digits and punctuation
    into one each, and cuts rare long words into pieces of about five
    letters; this errs a little high, which is the safe side for a warning.
    """
    total = 0
    for piece in _ROUGH_TOKEN.findall(text):
        if piece[0].isalpha() and len(piece) > 7:
            total += -(-len(piece) // 5)
        else:
            total += 1
    return total


def count_tokens(text: str, tokenize: Tokenize | None = None) -> int:
    """Tokens in ``text`` excluding begin/end; exact when ``tokenize`` is given."""
    if tokenize is not None:
        return int(tokenize(text))
    return count_tokens_estimate(text)


def token_limit_warning(
    text: str, *, tokenize: Tokenize | None = None, max_tokens: int = CLIP_MAX_TOKENS
) -> str | None:
    """A sentence when ``text`` is longer than the text encoder reads, else None."""
    n = count_tokens(text, tokenize)
    if n <= max_tokens:
        return None
    about = "" if tokenize is not None else "about "
    return (
        f"caption is {about}{n} tokens; CLIP reads {max_tokens}, "
        "the rest will be truncated"
    )
