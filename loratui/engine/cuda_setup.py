"""Process-wide CUDA settings every training process of ours (and the GPU benchmark) uses."""

from __future__ import annotations

import torch


def configure_cuda_backends() -> None:
    # TF32 matmuls: free speed on Ampere+ with no visible effect on diffusion training.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # cuDNN's fused attention is off: on an H200 (torch 2.11+cu130) it gave non-finite LoRA gradients on
    # builtin:tiny-flux in bf16 from the first step, so every update was skipped and the run stopped, and the
    # GPU benchmark's process later died with CUBLAS_STATUS_EXECUTION_FAILED after it; with it off, PyTorch
    # picks flash or memory-efficient attention and both ran clean (benchmarks/README.md, GPU section).
    torch.backends.cuda.enable_cudnn_sdp(False)
