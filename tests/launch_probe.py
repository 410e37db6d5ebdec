"""A stand-in for train.py under ``accelerate launch``: what did the launch start?

Each process builds its Accelerator as the trainer does (on the CPU where no accelerator is
available) and prints one line, ``probe {"distributed_type": ..., "process": i, "processes": n}``.
With ``--env FILE`` the first process also writes the environment it was started with to FILE, so a
test can run train.py in exactly the environment a launch gives it.
"""

import json
import os
import sys

import torch
from accelerate import Accelerator

environment = dict(os.environ)  # as the launcher set it, before accelerate adds to it
accelerator = Accelerator(cpu=not torch.accelerator.is_available())
report = {
    "distributed_type": accelerator.distributed_type.value,
    "process": accelerator.process_index,
    "processes": accelerator.num_processes,
}
os.write(
    sys.stdout.fileno(), f"probe {json.dumps(report)}\n".encode()
)  # one write: no interleaving
if len(sys.argv) == 3 and sys.argv[1] == "--env" and accelerator.is_main_process:
    with open(sys.argv[2], "w", encoding="utf-8") as file:
        json.dump(environment, file)
accelerator.wait_for_everyone()
