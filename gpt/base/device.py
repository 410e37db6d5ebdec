"""Which device a command runs on when the user names one (``--device``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpt.base.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: cuda if available, else mps if available, else cpu."""
    import torch  # here, not above: a command checks its arguments before torch's slow import

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise UserError(f"--device {name} is not available here; use --device auto or cpu")
    return torch.device(name)
