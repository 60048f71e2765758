"""What a run will do, known before torch loads: the preflight checks, the ``Schedule`` (length and the
validate/sample/save points) and the dataset check the UI shows."""
