"""Device discovery: where a trial trains."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """The first GPU when one is visible, else the CPU."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
