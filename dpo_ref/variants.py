"""The variant names the oracle accepts (no torch import: the CLI and the pytest plugin read them at start-up).

`dpo`, `cdpo`, `ipo` (paper IPO on summed log-probs) and `ipo-mean` (the same loss on length-averaged
log-probs) are the classic variants, checked by the catalogue in `dpo_ref.oracle.catalogue`. Every other
member of the loss family (`dpo_ref.family.LOSS_FAMILY`) is accepted at the loss level under its family
name, except TRL's length-normalised `ipo`, which the oracle calls `ipo-norm` (its `ipo` is the paper's).
The family's `sigmoid`, `cdpo` and `ipo_sum` are the classic `dpo`, `cdpo` and `ipo`.
"""

from __future__ import annotations

CLASSIC_VARIANTS = ("dpo", "cdpo", "ipo", "ipo-mean")
FAMILY_MAX_EXAMPLES = 25  # default examples per check for a family variant (mpmath reference: ~10 ms a row)

# oracle variant name -> key in dpo_ref.family.LOSS_FAMILY
FAMILY_VARIANTS: dict[str, str] = {
    "hinge": "hinge",
    "ipo-norm": "ipo",
    "exo_pair": "exo_pair",
    "nca_pair": "nca_pair",
    "robust": "robust",
    "bco_pair": "bco_pair",
    "sppo_hard": "sppo_hard",
    "aot": "aot",
    "aot_unpaired": "aot_unpaired",
    "apo_zero": "apo_zero",
    "apo_down": "apo_down",
    "discopop": "discopop",
    "sft": "sft",
    "sigmoid_norm": "sigmoid_norm",
    "simpo": "simpo",
}

VARIANTS = CLASSIC_VARIANTS + tuple(FAMILY_VARIANTS)

# family key -> the name the oracle reports it under (the classic ones included)
ORACLE_NAME: dict[str, str] = {"sigmoid": "dpo", "cdpo": "cdpo", "ipo_sum": "ipo"} | {
    key: name for name, key in FAMILY_VARIANTS.items()
}
