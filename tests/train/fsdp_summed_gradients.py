"""`dpo-ref train` with a broken FSDP, the counterexample of tests/train/test_fsdp.py (torchrun runs this file):
the gradients are summed over the processes instead of averaged, so each is N times too large."""

from __future__ import annotations

import sys

from torch.distributed.fsdp import FSDPModule

from dpo_ref.cli import main
from dpo_ref.train import fsdp

_shard = fsdp.shard


def shard_summing(model, device):
    model = _shard(model, device)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # reduce-scatter sums: no division by the process count
    return model


if __name__ == "__main__":
    fsdp.shard = shard_summing
    sys.exit(main(sys.argv[1:]))
