"""The baseline of the data-preparation benchmark: ``tokenizers``' own batched encoding, directly.

    RAYON_NUM_THREADS=2 python -m bench.encode_directly TOKENIZER_JSON TEXT_FILE

Reads the file in chunks of about 64 kB that end at a line break, encodes them with
``encode_batch_fast`` in batches of 8 chunks per thread (the batch geometry data_prep uses), takes
each encoding's ids and drops them; nothing is checked, converted or written. Prints one JSON line
with the bytes read and the seconds the encoding loop took. The thread count comes from the
``RAYON_NUM_THREADS`` environment variable, which ``tokenizers`` reads when it first encodes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator

import tokenizers

CHUNK_BYTES = 1 << 16
CHUNKS_PER_THREAD = 8


def chunks(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as file:
        while lines := file.readlines(CHUNK_BYTES):
            yield "".join(lines)


def batches(path: str, batch_size: int) -> Iterator[list[str]]:
    batch = []
    for chunk in chunks(path):
        batch.append(chunk)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_file(tokenizer: tokenizers.Tokenizer, path: str, threads: int) -> int:
    """Encode the whole file; returns the number of tokens."""
    tokens = 0
    for batch in batches(path, CHUNKS_PER_THREAD * threads):
        for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            tokens += len(encoding.ids)
    return tokens


def main(argv: list[str]) -> None:
    tokenizer_path, text_path = argv
    threads = int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1))
    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_path)
    start = time.perf_counter()
    tokens = encode_file(tokenizer, text_path, threads)
    seconds = time.perf_counter() - start
    print(json.dumps({"bytes": os.path.getsize(text_path), "tokens": tokens, "seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1:])
