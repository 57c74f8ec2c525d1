"""Tiny random-weight captioners built offline from configs, saved as ordinary model folders,
so the tests run the real loading and generation code without the hub.

The tokenizers are byte-level with no merges (every byte one token) plus the special tokens
each family's code looks for; the end-of-text embedding is zeroed so that random weights
still write a few tokens before stopping.
"""

from __future__ import annotations

import csv
from pathlib import Path

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_tokenizer(first: list[str], special: list[str], **kwargs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Letters only as ordinary tokens, so random generation decodes to readable text.
    alphabet = [c for c in sorted(pre_tokenizers.ByteLevel.alphabet()) if c.isascii() and (c.isalpha() or c == "Ġ")]
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(first + alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _silence(embedding, token_id: int) -> None:
    import torch

    with torch.no_grad():
        embedding.weight[token_id].zero_()


def build_qwen_vl(out: Path, version: str = "2.5") -> Path:
    """A Qwen2.5-VL (or Qwen3-VL with version="3") of about 100k parameters."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _byte_tokenizer([], QWEN_SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN_TEMPLATE
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIAL}
    vocab = len(tok)
    special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=1024, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if version == "3":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        patch = 16
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                  "mrope_section": [2, 3, 3], "mrope_interleaved": True})
        config = Qwen3VLConfig(text_config=text, vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=patch,
            num_position_embeddings=64, deepstack_visual_indexes=[1]), **special)
        model_class = Qwen3VLForConditionalGeneration
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        patch = 14
        text.update(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
            fullatt_block_indexes=[1], window_size=56, patch_size=patch), **special)
        model_class = Qwen2_5_VLForConditionalGeneration
    side = patch * 2
    images = Qwen2VLImageProcessorPil(min_pixels=side * side * 4, max_pixels=side * side * 16, patch_size=patch,
                                      merge_size=2, temporal_patch_size=2)
    torch.manual_seed(0)
    model = model_class(config)
    _silence(model.get_input_embeddings(), ids["<|im_end|>"])
    _silence(model.get_output_embeddings(), ids["<|im_end|>"])
    model.save_pretrained(out)
    tok.save_pretrained(out)
    images.save_pretrained(out)
    return out


def build_florence2(out: Path) -> Path:
    import torch
    from transformers import Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    special = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = _byte_tokenizer(special, special + ["<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                          unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    # 64 px through strides 4 and 2: 8x8 patches, plus the pooled one.
    images = CLIPImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                                   do_center_crop=False, image_seq_length=65)
    config = Florence2Config(
        vision_config=dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                           patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 4], num_groups=[2, 4],
                           window_size=4, projection_dim=32, max_position_embeddings=50),
        text_config=dict(model_type="bart", vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=256, bos_token_id=0, pad_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None),
        image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config)
    _silence(model.get_input_embeddings(), 2)
    model.save_pretrained(out)
    Florence2Processor(image_processor=images, tokenizer=tok).save_pretrained(out)
    return out


# name, category (9 rating, 4 character, 0 general), bias: a large bias is always on, a very
# negative one never; 0 follows the picture's redness.
TAGGER_TAGS = [
    ("general", 9, 4.0), ("sensitive", 9, -4.0),
    ("hatsune_miku", 4, -6.0), ("zxc_character", 4, 6.0),
    ("solo", 0, 6.0), ("long_hair", 0, 5.0), ("^_^", 0, 4.0), ("simple_background", 0, 3.0),
    ("watermark", 0, 5.5), ("red_theme", 0, 0.0), ("blue_hair", 0, -6.0),
]
TAGGER_SIZE = 32


def build_wd_tagger(out: Path, *, with_tags: bool = True) -> Path:
    """A WD-v3-shaped ONNX tagger: (batch, 32, 32, 3) BGR 0-255 in, one sigmoid score per tag out."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out.mkdir(parents=True, exist_ok=True)
    n = len(TAGGER_TAGS)
    weights = np.zeros((3, n), dtype=np.float32)
    red = [i for i, t in enumerate(TAGGER_TAGS) if t[0] == "red_theme"][0]
    weights[2, red] = 8.0  # BGR: channel 2 is red; mean red 1.0 gives +8 - 4 = +4
    bias = np.array([b for _, _, b in TAGGER_TAGS], dtype=np.float32)
    bias[red] = -4.0
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "weights"], ["logits0"]),
        helper.make_node("Add", ["logits0", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_wd_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", TAGGER_SIZE, TAGGER_SIZE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", n])],
        initializer=[numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
                     numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    if with_tags:
        with open(out / "selected_tags.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["tag_id", "name", "category", "count"])
            for i, (name, category, _) in enumerate(TAGGER_TAGS):
                writer.writerow([i, name, category, 100 - i])
    return out
