"""dpo-ref: the reference implementation of DPO, cDPO and IPO, and a conformance oracle for others'."""

from dpo_ref.errors import InputError, InputTypeError
from dpo_ref.logps import sequence_logps
from dpo_ref.losses import PreferenceLoss, dpo_loss, ipo_loss, preference_margin

__all__ = [
    "InputError",
    "InputTypeError",
    "PreferenceLoss",
    "dpo_loss",
    "ipo_loss",
    "preference_margin",
    "sequence_logps",
]
__version__ = "0.1.0"
