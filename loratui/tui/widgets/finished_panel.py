"""Where the finished LoRA is and how to use it, shown once a run has ended."""

from __future__ import annotations

from textual.widgets import Static

from loratui.events import Finished


def usage_text(lora: str, *, stopped_early: bool, step: int, total: int | None) -> str:
    head = (f"■ Stopped at step {step}/{total or '?'} and saved; press t to resume."
            if stopped_early else f"✔ Finished at step {step}.")
    return (f"{head} Your LoRA: {lora}\n"
            f"diffusers:  pipe.load_lora_weights(\"{lora}\")\n"
            "ComfyUI: copy it to ComfyUI/models/loras · A1111/Forge: copy it to models/Lora")


class FinishedPanel(Static):
    """Hidden until a run has ended with a LoRA on disk."""

    DEFAULT_CSS = """
    FinishedPanel {
        height: auto;
        border: round $success;
        padding: 0 1;
        display: none;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes, markup=False)

    def show(self, finished: Finished | None, total_steps: int | None) -> None:
        if finished is None:
            self.display = False
            return
        lora = finished.lora_path or "(no LoRA was written)"
        self.update(usage_text(lora, stopped_early=finished.stopped_early, step=finished.step,
                               total=total_steps))
        self.display = True
