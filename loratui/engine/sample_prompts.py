"""Sample prompts when the project has none: the trigger word with the captions of two training images.

A project made in a hurry has no ``[[sample.prompts]]``; "sample now" must
still draw something that says whether the LoRA learned its subject. The
captions the LoRA is trained on are the natural test. The choice is seeded
and made from the image names, so the trainer and the wizard's Review (which
offers to keep them) propose the same prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from loratui.config import ProjectConfig, SamplePrompt
from loratui.data.captions import build_caption

DEFAULT_COUNT = 2


@dataclass
class ProposedPrompts:
    prompts: list[SamplePrompt] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    """Where each prompt came from, e.g. "caption of toy_03.jpg"."""
    reason: str = ""
    """Why there are none, when there are none."""

    def describe(self) -> str:
        if not self.prompts:
            return self.reason
        listed = "; ".join(f"{p.prompt!r} ({src})" for p, src in zip(self.prompts, self.sources))
        return f"no [[sample.prompts]]: sampling with {listed}"


def propose_prompts(images: Sequence[tuple[str, str | None]], *, trigger_word: str, seed: int,
                    count: int = DEFAULT_COUNT) -> ProposedPrompts:
    """``images``: (name, caption) of the training images (held-out ones excluded)."""
    captioned = sorted((name, caption.strip()) for name, caption in images if caption and caption.strip())
    if captioned:
        chosen = random.Random(f"{seed}:sample-prompts").sample(captioned, min(count, len(captioned)))
        chosen.sort()
        prompts = [SamplePrompt(prompt=build_caption(caption, trigger_word=trigger_word, rng=random.Random(0)),
                                seed=i + 1)
                   for i, (_, caption) in enumerate(chosen)]
        return ProposedPrompts(prompts, [f"caption of {name}" for name, _ in chosen])
    if trigger_word.strip():
        return ProposedPrompts([SamplePrompt(prompt=trigger_word.strip(), seed=1)], ["the trigger word"])
    return ProposedPrompts(reason="no sample was made: there are no [[sample.prompts]], no captions and no "
                                  "trigger word to draw from. Add a prompt in the setup (e, Training step) or "
                                  "[[sample.prompts]] in loratui.toml.")


def prompts_for_run(cfg: ProjectConfig, images: Sequence[tuple[str, str | None]]) -> ProposedPrompts:
    """The configured prompts, or proposed ones when there are none."""
    if cfg.sample.prompts:
        return ProposedPrompts(list(cfg.sample.prompts), [""] * len(cfg.sample.prompts))
    return propose_prompts(images, trigger_word=cfg.data.trigger_word, seed=cfg.train.seed)
