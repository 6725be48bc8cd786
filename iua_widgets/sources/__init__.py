"""Sources of responses: arrays, generators, DNIKit producers, PyTorch models."""

from .producers import iter_batches, split_dataset

__all__ = ["iter_batches", "split_dataset"]
