"""Train GPT-style language models and generate text from them.

The subpackages are the layers, each importing only from those listed before it (tests/test_layers.py
checks this): ``base`` (errors, files, config, the command-line edge), ``data`` (tokenizers, token
streams), ``models`` (the GPT, the baselines, generation), ``run`` (the run folder: what a training
run writes and every reader reads), ``interop`` (Hugging Face formats), ``training`` (the trainer),
``analysis`` (evaluation, reports, sweeps, lessons). The modules at this level are the commands,
thin shells over those layers.
"""
