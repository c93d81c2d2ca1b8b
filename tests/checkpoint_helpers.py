"""A trainer state sent through torch.save and torch.load, as a checkpoint on disk would be."""
import io

import torch


def through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # what a checkpoint may hold
