"""Text as tokens: the tokenizer of a data folder and the memory-mapped token streams training and
evaluation read. Imports only ``gpt.base``."""
