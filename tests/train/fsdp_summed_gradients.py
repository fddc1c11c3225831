"""`dpo-ref train` with a broken FSDP, the counterexample of tests/train/test_fsdp.py (torchrun runs this file):
the gradients summed over the processes instead of averaged, so each is N times too large. (The reduce-scatter
itself cannot be told to sum on gloo, which has no pre-multiplied sum: the sum is made from the average, just
before the trainer clips the gradients.)"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from dpo_ref.cli import main

_clip = torch.nn.utils.clip_grad_norm_


@torch.no_grad()
def summed_then_clipped(params, *args, **kwargs):
    params = list(params)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(dist.get_world_size())  # the average times N: the sum
    return _clip(params, *args, **kwargs)


if __name__ == "__main__":
    torch.nn.utils.clip_grad_norm_ = summed_then_clipped
    sys.exit(main(sys.argv[1:]))
