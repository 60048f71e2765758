"""Base-model families, checkpoint reading and offline loading."""
