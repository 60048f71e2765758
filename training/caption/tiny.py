"""Tiny caption models saved as real model folders: a WD14-style tagger (ONNX), BLIP, Florence-2, a chat model.

For the tests and the benchmark, which must run offline and in seconds. The tagger is not random: each tag's score
is a linear function of the mean of one input channel, so a test can tell exactly what pixels the model was given.
``onnx`` (the dev extra) builds the tagger; transformers builds the others.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from training.caption.tagger import MODEL_FILE
from training.caption.tags import TAGS_FILE


@dataclass(frozen=True)
class TinyTag:
    """score = weight * mean(input channel ``channel``) + bias; ``channel`` counts in the model's order (BGR for
    WD14: 0 is blue, 2 is red) and None means a constant score of ``bias``."""

    name: str
    category: int
    channel: int | None = None
    weight: float = 1 / 255
    bias: float = 0.0


def save_tiny_tagger(folder: Path, tags: list[TinyTag], size: int = 12, batch: int | str = "batch",
                     extra_outputs: int = 0) -> Path:
    """Write ``model.onnx`` (input [batch, size, size, 3] float32, output [batch, tags]) and ``selected_tags.csv``.
    ``extra_outputs`` adds constant scores the csv does not list (a mismatched pair of files)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    count = len(tags) + extra_outputs
    weights = np.zeros((3, count), dtype=np.float32)
    bias = np.zeros(count, dtype=np.float32)
    for i, tag in enumerate(tags):
        if tag.channel is not None:
            weights[tag.channel, i] = tag.weight
        bias[i] = tag.bias
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["means"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["means", "weights"], ["scaled"]),
         helper.make_node("Add", ["scaled", "bias"], ["output"])],
        "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, count])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / MODEL_FILE)
    with open(folder / TAGS_FILE, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, tag in enumerate(tags):
            writer.writerow([1000 + i, tag.name, tag.category, 100 - i])
    return folder


# Enough words for a tiny tokenizer to say something; the specials are the ones BLIP's BERT tokenizer expects.
_WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "on", "the", "mat", "sitting", "white", "background"]
_BLIP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def save_tiny_blip(folder: Path, image_size: int = 16, seed: int = 0) -> Path:
    """A BLIP captioning model a few kilobytes big with its processor (a WordPiece vocab of a dozen words)."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(_BLIP_SPECIALS + _WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    ids = {w: i for i, w in enumerate(_BLIP_SPECIALS)}
    config = BlipConfig(
        text_config={"vocab_size": len(_BLIP_SPECIALS) + len(_WORDS), "hidden_size": 16, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 128,
                         "bos_token_id": ids["[DEC]"], "sep_token_id": ids["[SEP]"], "pad_token_id": ids["[PAD]"],
                         "eos_token_id": ids["[SEP]"]},
        vision_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                           "image_size": image_size, "patch_size": 8},
        projection_dim=16)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    # Random weights may end a caption at once or say only special tokens; words every time make tests readable.
    model.generation_config.min_new_tokens = 3
    model.generation_config.suppress_tokens = [ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[DEC]")]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    vocab.unlink()  # the processor saved its own tokenizer files
    return folder


def save_tiny_florence2(folder: Path, seed: int = 0) -> Path:
    """A Florence-2 model (transformers' native class, no remote code) with a byte-pair vocab of a dozen words."""
    import torch
    from transformers import (
        BartTokenizer,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words = specials + ["a"] + [f"\u0120{w}" for w in _WORDS] + ["Describe", "What", "."]
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = BartTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              extra_special_tokens={"image_token": "<image>"})
    # A 64 px image leaves the vision tower's four stride-2 stages (after a stride-4 stem) a 2x2 grid: 4 tokens,
    # plus the pooled one.
    images = CLIPImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                                   do_center_crop=False, image_seq_length=5)
    processor = Florence2Processor(image_processor=images, tokenizer=tokenizer)
    config = Florence2Config(
        vision_config={"depths": [1, 1, 1, 1], "embed_dim": [8, 8, 8, 8], "num_heads": [1, 1, 1, 1],
                           "num_groups": [1, 1, 1, 1], "window_size": 2, "projection_dim": 16},
        text_config={"vocab_size": len(tokenizer), "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                         "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 32,
                         "decoder_ffn_dim": 32, "max_position_embeddings": 128, "bos_token_id": 0, "pad_token_id": 1,
                         "eos_token_id": 2, "decoder_start_token_id": 2, "forced_bos_token_id": 0},
        image_token_id=tokenizer.image_token_id)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config)
    model.generation_config.min_new_tokens = 3
    model.generation_config.suppress_tokens = [0, 1, 3, tokenizer.image_token_id]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                  "<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                  "{% if add_generation_prompt %}assistant : {% endif %}")


def save_tiny_chat_vlm(folder: Path, seed: int = 0) -> Path:
    """A LLaVA-style chat model (CLIP vision tower, Llama decoder, a chat template) of a few kilobytes, loaded
    through ``AutoModelForImageTextToText`` like Qwen2.5-VL or LLaVA checkpoints."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "user", "assistant", ":", "describe", "this", "image", *_WORDS]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    images = CLIPImageProcessorPil(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16},
                                   do_center_crop=False)
    # 16 px in 8 px patches: 4 patch tokens plus the class token, all kept ("full").
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="full", num_additional_image_tokens=1,
                               chat_template=_CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": len(words), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3},
        image_token_index=4, vision_feature_select_strategy="full", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.min_new_tokens = 3
    model.generation_config.suppress_tokens = [0, 1, 3, 4]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
