"""Sample text from a trained model: ``python sample.py --checkpoint OUT_DIR`` (see ``--help``)."""

from gpt.sample_cli import main

if __name__ == "__main__":
    main()
