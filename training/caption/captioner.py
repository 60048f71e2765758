"""Sentence captioners through transformers: BLIP, Florence-2 and chat vision-language models.

Which one is chosen from the folder's ``config.json`` (``model_type``). Code from a model's repository
(``trust_remote_code``) runs only when the user passed ``--trust-remote-code``; a model that needs it and has no
native transformers class is one line saying so. float32 on CPU; bf16 (fp16 where bf16 is missing) on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from training.caption.models import read_config
from training.contract.errors import UserError

FLORENCE_TASK = "<DETAILED_CAPTION>"
CHAT_PROMPT = "Describe this image in one detailed sentence, as a caption for training an image model."


@dataclass(frozen=True)
class CaptionOptions:
    prompt: str | None = None
    max_new_tokens: int = 75
    trust_remote_code: bool = False


class Captioner:
    """One caption per image. ``splits_tags`` is False: a sentence merges with an existing caption as a whole."""

    splits_tags = False

    def __init__(self, model, processor, style: str, prompt: str | None, options: CaptionOptions) -> None:
        self.model, self.processor, self.style, self.prompt, self.options = model, processor, style, prompt, options

    def describe(self, images: list[Image.Image]) -> list[list[str]]:
        import torch

        inputs = self._inputs(images).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.options.max_new_tokens, do_sample=False)
        out = _without_prompt(out, inputs.get("input_ids"))
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [[" ".join(text.split())] for text in texts]

    def _inputs(self, images: list[Image.Image]):
        if self.style == "chat":
            message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(message, add_generation_prompt=True)
            return self.processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
        if self.prompt:
            return self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt")
        return self.processor(images=images, return_tensors="pt")


def load_captioner(folder: Path, options: CaptionOptions) -> Captioner:
    """The captioner in ``folder`` on the best device, ready to describe images."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # its notes on processor backends are not the user's concern
    transformers.utils.logging.disable_progress_bar()
    config = read_config(folder)
    style, model_class, remote = _style(folder, config, options.trust_remote_code)
    cuda = torch.cuda.is_available()
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=remote)
        model = model_class.from_pretrained(folder, dtype=dtype, trust_remote_code=remote)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load the captioner in {folder}: {str(e).splitlines()[0]}") from e
    model.to("cuda" if cuda else "cpu").eval()
    if style == "chat" and not getattr(processor, "chat_template", None):
        style = "plain"  # an image-text model without a chat template takes its prompt as plain text
    if getattr(processor, "tokenizer", None) is not None and not model.config.is_encoder_decoder:
        processor.tokenizer.padding_side = "left"  # batched generation continues every row from its end
    prompt = options.prompt or {"florence2": FLORENCE_TASK, "chat": CHAT_PROMPT}.get(style)
    return Captioner(model, processor, style, prompt, options)


# The classes a repository's own code may register a captioner under, most specific first.
_REMOTE_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")


def _style(folder: Path, config: dict, trust_remote_code: bool):
    """How to drive the model (blip, florence2, chat, plain), the class that loads it, and whether that class comes
    from the model's repository."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = config.get("model_type", "")
    if model_type == "blip":
        return "blip", transformers.BlipForConditionalGeneration, False
    if model_type == "florence2":
        return "florence2", transformers.Florence2ForConditionalGeneration, False
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return "chat", transformers.AutoModelForImageTextToText, False
    if model_type in CONFIG_MAPPING:
        raise UserError(f"the model in {folder} is a {model_type}, not an image captioner: use BLIP, Florence-2 or "
                        "a vision-language chat model (AutoModelForImageTextToText), or --tagger for a WD14 tagger")
    registered = [name for name in _REMOTE_CLASSES if name in config.get("auto_map", {})]
    if not registered:
        raise UserError(f"the model in {folder} ({model_type or 'no model_type'}) is not one transformers knows "
                        "and its config.json names no captioning class in auto_map")
    if not trust_remote_code:
        raise UserError(f"the model in {folder} ({model_type}) needs code from its own repository, which is not "
                        "run by default: pass --trust-remote-code if you trust it, or use a version transformers "
                        "supports natively (for Florence-2: florence-community/Florence-2-base)")
    return "chat", getattr(transformers, registered[0]), True


def _without_prompt(out, input_ids):
    """A decoder-only model's output starts with its whole input (the chat prompt); keep only the new tokens."""
    if input_ids is None or out.shape[1] <= input_ids.shape[1]:
        return out
    head = out[:, :input_ids.shape[1]]
    return out[:, input_ids.shape[1]:] if bool((head == input_ids.to(out.device)).all()) else out
