"""Nothing is loaded on trust: a weights file records what it holds and which tokenizer it needs.

A checkpoint's files are checked against its manifest (:func:`gpt.run.checkpoints.find_damage`). A
weights file outside a checkpoint (a run's ``model.safetensors``, an export's) carries its own
check in its safetensors metadata:

* ``sha256``: the SHA-256 of its tensors (name, dtype, shape and bytes of each, in name order) and
  of the rest of its metadata, so one flipped bit anywhere in the file is found on load;
* ``tokenizer_sha256``: the fingerprint of the ``tokenizer.json`` the weights were trained with,
  the SHA-256 of its canonical JSON (keys sorted, no spaces), so another tokenizer of the same
  size, which would decode every id as another piece of text, is refused, while a copy that
  only differs in layout is not.

Weights saved before these keys existed still load, with a note saying they are unverified.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from gpt.base.errors import UserError
from gpt.data.tokenizer import tokenizer_fingerprint

DIGEST_KEY = "sha256"
TOKENIZER_KEY = "tokenizer_sha256"


def weights_digest(tensors: Iterable[tuple[str, torch.Tensor]], metadata: Mapping[str, str]) -> str:
    """The SHA-256 of ``tensors`` (read one at a time, in any order) and of ``metadata``, but for
    its ``sha256`` and the keys that safetensors adds itself, one per tied tensor that it stores
    once (named by the tensor, saying which one it shares)."""
    per_tensor = {name: _tensor_sha256(name, tensor) for name, tensor in tensors}
    digest = hashlib.sha256()
    for name in sorted(per_tensor):
        digest.update(per_tensor[name].encode())
    others = {
        key: value for key, value in metadata.items() if key != DIGEST_KEY and key not in per_tensor
    }
    digest.update(json.dumps(others, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def _tensor_sha256(name: str, tensor: torch.Tensor) -> str:
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def sealed(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` with the digest that :func:`check_weights` verifies, to be written with
    ``tensors`` (add the tokenizer's fingerprint to ``metadata`` first, as ``TOKENIZER_KEY``)."""
    return {**metadata, DIGEST_KEY: weights_digest(tensors.items(), metadata)}


def check_weights(
    path: Path, tensors: Iterable[tuple[str, torch.Tensor]], metadata: Mapping[str, str]
) -> None:
    """Refuse weights read from ``path`` that are not what was written there; a file saved before
    weights carried a digest gets a note instead."""
    recorded = metadata.get(DIGEST_KEY)
    if recorded is None:
        print(
            f"note: {path} carries no checksum (saved by an earlier version, or not by this "
            "project); it is read unverified",
            file=sys.stderr,
        )
        return
    if weights_digest(tensors, metadata) != recorded:
        raise UserError(
            f"{path} is damaged: its content does not match the SHA-256 recorded in it when it "
            "was saved; use another copy, one of the run's checkpoints/step_* folders, or retrain"
        )


def check_tokenizer(tokenizer: Path, recorded: str | None, weights: Path) -> None:
    """Refuse a ``tokenizer`` file other than the one ``weights`` were saved with (``recorded``,
    its fingerprint; None for weights saved before fingerprints, which are not checked)."""
    if recorded is not None and tokenizer_fingerprint(tokenizer) != recorded:
        raise UserError(
            f"{tokenizer} is not the tokenizer {weights} was trained with (its fingerprint "
            "differs); put back the tokenizer.json of the data the model was trained on"
        )
