"""The training data: images, captions, aspect-ratio buckets and the dataset scan.

Nothing here imports torch at module level, so the wizard can scan a folder
before torch has loaded.
"""

from __future__ import annotations

from loratui.data.buckets import Bucket, CroppedImage, choose_bucket, make_buckets, resize_and_crop
from loratui.data.captions import (
    CaptionText,
    apply_prefix,
    build_caption,
    caption_path_for,
    count_tokens,
    count_tokens_estimate,
    find_caption,
    read_caption,
    tag_frequency,
    token_limit_warning,
    write_caption,
)
from loratui.data.images import (
    IMAGE_EXTENSIONS,
    ImageProblem,
    LoadedImage,
    image_to_tensor,
    load_image,
    read_image_size,
    tensor_to_image,
)
from loratui.data.scan import ImageRecord, ScanReport, scan_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "Bucket",
    "CaptionText",
    "CroppedImage",
    "ImageProblem",
    "ImageRecord",
    "LoadedImage",
    "ScanReport",
    "apply_prefix",
    "build_caption",
    "caption_path_for",
    "choose_bucket",
    "count_tokens",
    "count_tokens_estimate",
    "find_caption",
    "image_to_tensor",
    "load_image",
    "make_buckets",
    "read_caption",
    "read_image_size",
    "resize_and_crop",
    "scan_images",
    "tag_frequency",
    "tensor_to_image",
    "token_limit_warning",
    "write_caption",
]
