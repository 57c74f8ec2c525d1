"""A merged SD3 model as one file in the MMDiT's original layout, beside the diffusers folder.

The file holds the transformer alone under ``model.diffusion_model.joint_blocks.…``,
as the published SD3.5 checkpoints do; diffusers' ``from_single_file`` reads it
back (with the merged folder as its config) to the folder's own transformer,
and on SD3.5-Medium's real architecture diffusers' converter consumes every
tensor name we write and gives every diffusers weight its shape.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from loratui.cli import main
from loratui.project import ProjectPaths
from tests.test_flow_families import SD35_MEDIUM, make_project, pipeline, train, transformer_output, with_our_lora

torch.set_num_threads(1)


def test_merged_sd3_file_loads_through_from_single_file_as_the_folder(tmp_path: Path, capsys) -> None:
    from diffusers import SD3Transformer2DModel

    from loratui.models.loader import load_model

    project = make_project(tmp_path, "builtin:tiny-sd3", "lora.preset=all")
    train(project, 2)
    assert main(["export", str(project), "--merge"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    output = ProjectPaths(project).output
    folder, single = output / "zxc_toy-merged", output / "zxc_toy-merged.safetensors"
    assert f"{single.name} to models/diffusion_models/" in said
    with safe_open(str(single), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["modelspec.architecture"].startswith("stable-diffusion-v3")
    assert all(k.startswith("model.diffusion_model.") for k in keys)
    assert "model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight" in keys  # SD3.5's second attention

    pipe = pipeline("tiny-sd3")
    with_lora = with_our_lora(pipe, ProjectPaths(project).output / "zxc_toy.safetensors", "sd3")
    pipe.transformer = SD3Transformer2DModel.from_pretrained(str(folder), subfolder="transformer",
                                                             local_files_only=True)
    from_folder = transformer_output(pipe)
    pipe.transformer = SD3Transformer2DModel.from_single_file(str(single), config=str(folder),
                                                              subfolder="transformer", local_files_only=True,
                                                              torch_dtype=torch.float32)
    from_file = transformer_output(pipe)
    # Bit-equal weights; the outputs agree to float rounding only because diffusers' converter leaves q, k
    # and v as strided views of the fused qkv tensor, which a matmul sums in another order.
    folder_weights = SD3Transformer2DModel.from_pretrained(str(folder), subfolder="transformer",
                                                           local_files_only=True).state_dict()
    file_weights = pipe.transformer.state_dict()
    assert file_weights.keys() == folder_weights.keys()
    assert all(torch.equal(file_weights[k], folder_weights[k]) for k in folder_weights)
    assert torch.allclose(from_file, from_folder, rtol=0, atol=1e-6)
    assert torch.allclose(from_folder, with_lora, atol=1e-4)  # the LoRA is in the weights
    # loratui's own loader reads it as a base model, with the folder as config_source.
    loaded = load_model(str(single), config_source=str(folder))
    assert loaded.family == "sd3"
    a, b = loaded.unet.state_dict(), pipe.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def test_sd35_medium_names_are_the_ones_diffusers_converter_reads() -> None:
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from loratui.models.sd3_checkpoint import sd3_to_mmdit

    with torch.device("meta"):
        model = SD3Transformer2DModel(**SD35_MEDIUM)
    state = model.state_dict()
    original = sd3_to_mmdit(state)
    blocks = {k.split(".")[3] for k in original if ".joint_blocks." in k}
    assert len(blocks) == 24
    # SD3.5-Medium's first 13 blocks have the second attention; the last block's text stream has no output.
    assert sum(1 for k in original if k.endswith("x_block.attn2.qkv.weight")) == 13
    assert "model.diffusion_model.joint_blocks.23.context_block.attn.proj.weight" not in original
    assert original["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"].shape == (3 * 1536, 1536)
    left = dict(original)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(left)
    assert left == {}  # the converter pops what it reads: every name we write is consumed
    assert converted.keys() == state.keys()
    assert all(converted[k].shape == state[k].shape for k in state)
