"""The kohya/A1111 LoRA file format: key names (``names``), export with metadata (``export``), import into peft
(``importer``) and the self-check of an exported file against the model (``self_check``)."""
