"""Hugging Face formats in and out: GPT-2 weights as a starting point, trained runs exported.
Imports the layers below it, up to ``gpt.run``."""
