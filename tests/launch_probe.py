"""A stand-in for train.py under ``accelerate launch``: what did the launch start?

Each process chooses its device as the trainer does (:func:`gpt.training.launch.runs_on_cpu`), builds its
Accelerator and prints one line, ``probe {"distributed_type": ..., "device": ..., "process": i,
"processes": n}``. Options:

* ``--cpu``: as ``train.cpu=true``;
* ``--pretend-gpus``: torch reports two CUDA GPUs, so a machine without any shows what a launch
  would do on one with GPUs (nothing may then touch CUDA: the probe would fail);
* ``--env FILE``: the first process writes the environment it was started with to FILE, so a test
  can run train.py in exactly the environment a launch gives it.
"""

import argparse
import json
import os
import sys

import torch

environment = dict(os.environ)  # as the launcher set it, before accelerate adds to it
parser = argparse.ArgumentParser()
parser.add_argument("--cpu", action="store_true")
parser.add_argument("--pretend-gpus", action="store_true")
parser.add_argument("--env")
args = parser.parse_args()
if args.pretend_gpus:
    torch.accelerator.is_available = lambda: True
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 2

from accelerate import Accelerator  # noqa: E402  (after the pretence, as accelerate reads it)

from gpt.base.config import TrainConfig  # noqa: E402
from gpt.training.launch import runs_on_cpu  # noqa: E402

accelerator = Accelerator(cpu=runs_on_cpu(TrainConfig(cpu=args.cpu)))
report = {
    "distributed_type": accelerator.distributed_type.value,
    "device": accelerator.device.type,
    "process": accelerator.process_index,
    "processes": accelerator.num_processes,
}
os.write(
    sys.stdout.fileno(), f"probe {json.dumps(report)}\n".encode()
)  # one write: no interleaving
if args.env and accelerator.is_main_process:
    with open(args.env, "w", encoding="utf-8") as file:
        json.dump(environment, file)
accelerator.wait_for_everyone()
