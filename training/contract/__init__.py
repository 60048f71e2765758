"""The torch-free seam between the UI and the engine: the typed config and presets, the run-folder layout, typed
events, control flags, exit codes and the self-check record; ``services`` is the UI's door to the torch-free checks.

The only part of ``training`` that ``app/`` imports (docs/architecture.md, section 2)."""
