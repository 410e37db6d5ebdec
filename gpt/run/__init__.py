"""The run folder, the contract between the trainer and everything that reads a run: its file
names, metrics, facts, evaluations and weights. Imports ``gpt.base``, ``gpt.data``, ``gpt.models``."""
