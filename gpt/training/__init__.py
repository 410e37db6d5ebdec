"""The trainer on ``accelerate``: the loop, checkpoints and exact resumes, optimisers, launch checks,
tracking and throughput. Imports every layer below it, up to ``gpt.interop``."""
