"""The CUDA settings every training process applies (the calls work without a GPU)."""

from __future__ import annotations

import torch

from loratui.engine.cuda_setup import configure_cuda_backends


def test_cudnn_attention_is_off_and_tf32_on() -> None:
    # cuDNN's fused attention gave non-finite LoRA gradients on an H200: training must not pick it.
    saved = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        configure_cuda_backends()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.enable_cudnn_sdp(saved[0])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]
        torch.backends.cudnn.allow_tf32 = saved[2]
