"""The adapters injected into the base model's UNet and text encoders: which modules (``targets``), built as peft
layers per network type (``build``), what each stores (``sizes``), kohya's dropouts for LoRA (``dropout``), what
cannot be built (``support``), the module tables of the bundled configs (``tables``); ``lora`` holds the adapter
name and the plain attention LoRA the file tests use."""
