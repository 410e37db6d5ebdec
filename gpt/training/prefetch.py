"""Micro-batches prepared ahead: the next one is read, pinned and copied while the current one trains.

The trainer's micro-batches are numbered through the run (step x accumulation steps + micro-step),
and each is a pure function of its number. When the trainer takes micro-batch n, a background
thread starts preparing n + 1: it reads its windows from the memory-mapped tokens and, on CUDA,
copies them into pinned memory and on to the GPU on a stream of its own, so that the copy runs
beside the computation of micro-batch n. The trainer's stream waits for that copy on the device
(an event), never on the host.

A number other than the one prepared (the first of a run, of a resumed run, or a benchmark's jump)
is prepared then and there, so the batches are those of ``fetch`` whatever the order of the
requests; only the overlap is lost. On the CPU the thread reads ahead, and the tensors it returns
are ``fetch``'s own: the same batches, bitwise, as reading them in the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

Batch = tuple[torch.Tensor, ...]


class Prefetcher:
    """Batches by number, each next one prepared in the background while the current one is used."""

    def __init__(self, fetch: Callable[[int], Batch], device: torch.device):
        self.fetch = fetch
        self.device = device
        self._copies = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._ahead: tuple[int, Future] | None = None

    def get(self, number: int) -> Batch:
        """Batch ``number`` on the device, ready for the current stream; batch ``number + 1``
        starts being prepared."""
        if self._ahead is None or self._ahead[0] != number:
            self._ahead = (number, self._worker.submit(self._prepare, number))
        batch, copied = self._ahead[1].result()
        self._ahead = (number + 1, self._worker.submit(self._prepare, number + 1))
        if copied is None:
            return batch
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(copied)
        for tensor in batch:
            tensor.record_stream(stream)  # its memory is reused only after this stream used it
        return batch

    def close(self) -> None:
        """Stop preparing: the batch under way is finished and dropped."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._ahead = None

    def _prepare(self, number: int) -> tuple[Batch, torch.cuda.Event | None]:
        """Batch ``number`` and, on CUDA, the event its copy to the GPU records when done."""
        batch = self.fetch(number)
        if self._copies is None:
            return tuple(tensor.to(self.device) for tensor in batch), None
        with torch.cuda.stream(self._copies):
            batch = tuple(_pinned(tensor).to(self.device, non_blocking=True) for tensor in batch)
            copied = torch.cuda.Event()
            copied.record(self._copies)
        return batch, copied


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``tensor`` in pinned memory, which the GPU copies from asynchronously.
    (A strided one, such as a batch's inputs, every window but its last token, would first be made
    contiguous in ordinary memory, from which the copy is synchronous.)"""
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return pinned.copy_(tensor)
