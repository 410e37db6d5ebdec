"""The language models (the GPT, the MLP and CNN baselines) and text generation with the KV cache.
Imports ``gpt.base`` and ``gpt.data``."""
