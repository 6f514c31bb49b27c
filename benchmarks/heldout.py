"""The real subjects kept out of every shipped model's training, for our own evaluation.

One definition, read by the training-set writer and by the benchmarks.
"""

from __future__ import annotations

#: IXI subjects (``../shared/data/ixi-t1-dlmuse``) never used for training: the last
#: five by id, so the split needs no random choice.
IXI_HELDOUT = (
    "IXI072-HH-2324",
    "IXI079-HH-1388",
    "IXI080-HH-1341",
    "IXI083-HH-1357",
    "IXI092-HH-1436",
)
