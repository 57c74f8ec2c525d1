"""A base model with the project's LoRA merged into its weights (``loratui export --merge``).

Two outputs from one merge: ``output/NAME-merged/``, a diffusers folder
(``from_pretrained`` loads it, and it serves as ``config`` for the single file
below), and ``output/NAME-merged.safetensors``, one original-layout checkpoint
that A1111/Forge and ComfyUI load like any downloaded model. Both hold plain
weights: the LoRA is in them at the chosen scale and cannot be taken out.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from loratui.config import ConfigError, load_config
from loratui.project import ProjectPaths, safe_name

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def merged_names(paths: ProjectPaths, output_name: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Where the merged folder and single file go: ``<out_dir>/NAME-merged`` and ``….safetensors``."""
    root = Path(out_dir) if out_dir is not None else paths.output
    stem = f"{safe_name(output_name)}-merged"
    return root / stem, root / f"{stem}.safetensors"


def _lora_source(paths: ProjectPaths, cfg: Any, lora: Path | None) -> tuple[Path, bool]:
    """The LoRA to merge and whether it is a checkpoint folder (else a LoRA file).

    Default: the newest checkpoint (float32, exactly what training left),
    else the exported ``output/NAME.safetensors``.
    """
    from loratui.engine import checkpoint as ckpt

    if lora is not None:
        lora = Path(lora)
        if lora.is_dir():
            return lora, True
        if lora.is_file():
            return lora, False
        raise ConfigError(f"no LoRA file or checkpoint folder at {lora}; pass an existing .safetensors file "
                          "or a checkpoints/step-NNNNNN folder.")
    latest = ckpt.latest_checkpoint(paths.checkpoints)
    if latest is not None:
        return latest, True
    exported = paths.lora_file(cfg)
    if exported.is_file():
        return exported, False
    raise ConfigError(f"{paths.root} has no checkpoint and no {exported.name} to merge; train the project first "
                      "or pass a LoRA file.")


def _read_lora(source: Path, is_checkpoint: bool, family: str, layers_per_block: int | None) -> Any:
    from loratui.lora.fileformat import load_lora_file

    if not is_checkpoint:
        return load_lora_file(source, family=family, layers_per_block=layers_per_block)
    from safetensors.torch import save_file

    from loratui.engine import checkpoint as ckpt

    loaded = ckpt.load_checkpoint(source)
    # A checkpoint holds kohya-keyed tensors; reading them through the file
    # reader gives the same names and checks as any LoRA file.
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "lora.safetensors"
        save_file({k: v.contiguous() for k, v in loaded.lora.items()}, str(staged))
        lora = load_lora_file(staged, family=family, layers_per_block=layers_per_block)
    lora.path = source
    return lora


def _finish_folder(folder: Path, base: Path | None) -> None:
    """Tokenizers copied as the base model ships them; permissions any user of the machine can read.

    Merging does not touch the tokenizers, and a re-saved one may lose the
    vocab.json/merges.txt that older transformers releases need.
    """
    if base is not None:
        for sub in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            if (base / sub).is_dir() and (folder / sub).is_dir():
                shutil.rmtree(folder / sub)
                shutil.copytree(base / sub, folder / sub)
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        # mkdtemp and some library writers make owner-only files; a model folder is meant to be shared.
        os.chmod(path, (0o755 if path.is_dir() else 0o644) & ~umask)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Put a finished folder in place; an older one is removed only after the new one is there."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def merge_into_model(model: Any, lora: Any, scale: float) -> None:
    """Bake a LoRA file into a LoadedModel's own weights at ``scale`` (0 leaves the base model)."""
    from loratui.lora.inject import inject_from_file
    from loratui.lora.merge import bake_networks

    from loratui.lora.naming import components_for

    names = components_for(model.family)[1:]  # the CLIP encoders; SD3's and FLUX's T5 come last, untouched
    roots = {"unet": model.unet, **dict(zip(names, model.text_encoders))}
    try:
        networks = inject_from_file(lora, roots)
    except ValueError as exc:
        # A LoRA for another family or layout: the user picked the wrong file or base model.
        raise ConfigError(f"cannot merge: {exc}") from None
    # bake_networks sums in float32 and removes the wrappers: plain modules with plain keys.
    bake_networks(networks, scale)


def _save_flow_single_file(single: Path, model: Any, dtype: torch.dtype, meta: dict[str, str]) -> Path:
    """The merged transformer alone in its original layout, as FLUX and SD3.5 checkpoints are published:
    Black Forest Labs' keys for FLUX, the MMDiT's ``model.diffusion_model.joint_blocks.`` for SD3. It loads
    with the merged folder (or the base model) as its config."""
    from safetensors.torch import save

    from loratui.lora.fileformat import write_atomic
    from loratui.models.flux_checkpoint import flux_to_bfl
    from loratui.models.sd3_checkpoint import sd3_to_mmdit

    from loratui.models.chroma_checkpoint import chroma_to_original
    from loratui.models.flux2_checkpoint import flux2_to_original
    from loratui.models.zimage_checkpoint import zimage_to_original

    # Qwen-Image's published single files keep diffusers' own names.
    to_original = {"flux": flux_to_bfl, "zimage": zimage_to_original, "qwen_image": dict,
                   "chroma": chroma_to_original, "flux2_klein": flux2_to_original}.get(model.family, sd3_to_mmdit)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.unet.state_dict().items()}
    write_atomic(single, save(to_original(state), {k: v for k, v in meta.items() if isinstance(v, str)}))
    return single


def export_merged(project_dir: str | os.PathLike[str], *, scale: float = 1.0,
                  lora: str | os.PathLike[str] | None = None,
                  out_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:  # fmt: skip
    """Merge the project's LoRA into its base model and save it as a diffusers folder and one checkpoint file.

    ``lora``: a LoRA file or a checkpoint folder (default: the newest
    checkpoint, else ``output/NAME.safetensors``). Weights are saved in
    ``save.precision``. Returns (folder, single_file).
    """
    from loratui.engine.quiet import quiet_libraries
    from loratui.models.builtin import quiet_progress
    from loratui.engine.build import base_model_folder, load_project_model
    from loratui.models.single_file import checkpoint_metadata, save_single_file

    quiet_libraries()
    project = Path(project_dir)
    cfg = load_config(project)
    paths = ProjectPaths(project)
    source, is_checkpoint = _lora_source(paths, cfg, Path(lora) if lora is not None else None)
    folder, single = merged_names(paths, cfg.output_name, Path(out_dir) if out_dir is not None else None)
    dtype = SAVE_DTYPES[cfg.save.precision]

    # Merged on the CPU in float32: the sum is exact before one final rounding.
    model = load_project_model(ProjectPaths(project), cfg, dtype=torch.float32, device="cpu")
    lpb = model.unet.config.get("layers_per_block")
    merge_into_model(model, _read_lora(source, is_checkpoint, model.family, lpb if isinstance(lpb, int) else None),
                     scale)
    pipe = model.make_pipeline()
    pipe.to(dtype=dtype)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        with quiet_progress():
            pipe.save_pretrained(str(tmp), safe_serialization=True)
        _finish_folder(tmp, base_model_folder(ProjectPaths(project), cfg))
        _replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = checkpoint_metadata(model.family, model.prediction_type, title=f"{cfg.output_name} (merged)",
                               resolution=cfg.data.resolution)
    meta.update({"loratui.merged_lora": source.name, "loratui.merge_scale": f"{scale:g}",
                 "loratui.base_model": cfg.model.base})
    if model.is_flow:
        return folder, _save_flow_single_file(single, model, dtype, meta)
    save_single_file(single, unet=model.unet, vae=model.vae, text_encoders=model.text_encoders,
                     family=model.family, prediction_type=model.prediction_type, dtype=dtype, metadata=meta)
    return folder, single
