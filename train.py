"""Train a model: ``python train.py CONFIG [key=value ...]`` (see ``--help``)."""

from gpt.train_cli import main

if __name__ == "__main__":
    main()
