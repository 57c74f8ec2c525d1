"""``--push REPO``: upload a card folder to the Hugging Face Hub (the optional ``hub`` extra)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from loratui.errors import UserError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


class HubError(UserError):
    """The upload cannot start or failed; the message says what to do."""


def upload_plan(folder: Path) -> list[tuple[str, int]]:
    """(path in the repository, bytes) of every file the upload sends, in order."""
    return [(p.relative_to(folder).as_posix(), p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def _hub_api() -> Any:
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError as exc:
        raise HubError("--push needs huggingface_hub: pip install -e '.[hub]'") from exc
    if not get_token():
        raise HubError("not logged in to the Hugging Face Hub: run `hf auth login` (or set HF_TOKEN) and push "
                       "again; the card folder is written either way")
    return HfApi()


def push_folder(folder: Path, repo: str, *, private: bool = False, api: Any = None) -> str:
    """Create ``repo`` (a model repository) if needed and upload ``folder`` to it; returns its URL.

    ``api`` stands in for ``huggingface_hub.HfApi`` (``create_repo``, ``upload_folder``).
    """
    if not _REPO_ID.match(repo):
        raise HubError(f"--push {repo!r} is not a Hub repository id; use OWNER/NAME, e.g. yourname/my-lora")
    if not (folder / "README.md").is_file():
        raise HubError(f"{folder} has no README.md; write the card first (loratui export DIR --card)")
    api = api if api is not None else _hub_api()
    try:
        url = api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(folder),
                          commit_message="Upload LoRA, samples and model card (loratui)",
                          ignore_patterns=[".*"])
    except HubError:
        raise
    except Exception as exc:  # noqa: BLE001 - network and permission errors come in many classes
        raise HubError(f"uploading {folder} to {repo} failed: {type(exc).__name__}: {exc}. The folder is "
                       "complete; push again, or upload it with `hf upload`") from exc
    return str(getattr(url, "url", url) or f"https://huggingface.co/{repo}")
