"""Sources of responses: arrays, generators, DNIKit producers, PyTorch models."""

from .producers import expected_inputs, iter_batches, split_dataset

__all__ = ["expected_inputs", "iter_batches", "split_dataset"]
