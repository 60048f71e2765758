"""A training run: ``runner`` (the process's view: folder, events, how it ends) -> ``prepare`` (builds the ``parts``)
-> ``loop`` (epochs, the step, the schedule's actions) with ``checkpoints``, ``validation``, ``samples``; ``dry_run``
replays the same schedule without a model; ``frame`` is what both run inside."""
