"""Data-parallel runs under `torchrun` or `accelerate launch`, on accelerate's process state.

A launcher starts one process per device and tells each its rank; every process
works on its share and float64 sums cross processes once, at the end. Without a
launcher a run is one process, its own main process, and nothing here
communicates.
"""

import atexit

import torch
from accelerate import PartialState


def processes(device: str = "auto") -> PartialState:
    """This process's place in the run. The first call joins the launcher's process group:
    NCCL between GPUs, gloo between CPU processes (`device` cpu, or no GPU at all)."""
    joining = not torch.distributed.is_initialized()  # this call joins the group, if there is one
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if joining and torch.distributed.is_initialized():
        # Left before the interpreter exits: a process whose share is done exits while the main
        # one works on, and a group torn down by the interpreter aborts the process.
        atexit.register(state.destroy_process_group)
    return state


def is_main() -> bool:
    """The process that decodes, scores, prints and writes; the only one without a launcher."""
    return processes().is_main_process


def sum_across(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its sum over every process of the run."""
    state = processes()
    if state.num_processes == 1:
        return
    for tensor in tensors:
        on_device = tensor.to(state.device)  # NCCL reduces GPU tensors only
        torch.distributed.all_reduce(on_device)
        tensor.copy_(on_device)
