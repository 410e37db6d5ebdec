"""Text into a folder the trainer reads: sources (files, folders, globs, Hugging Face datasets),
tokenizers trained or reused, splits, and the memory-mapped token streams with their metadata.
Imports ``gpt.base`` and ``gpt.data``."""
