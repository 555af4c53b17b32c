"""Class-balanced sampling: the weights of ``train.balanced_sampling: true`` and seed 002's
class-balancing minibatch sampler (``train.balanced_sampling: undersample``).

McDonnell (seed 002, section 2.2; ``MixupGenerator.ShuffleBalancedUnderSampling`` in the authors'
code): an epoch uses ``n_classes * min_i(N_i)`` examples, ``min_i(N_i)`` of every class; the
smallest class is used whole, the others contribute a random subset drawn afresh each epoch
(without replacement). The examples of each class are shuffled, then the epoch's order is built
``n_classes`` examples at a time, one of each class in a random class order per round, so that
every minibatch is as balanced as its size allows (a batch of 32 with 3 classes holds 10 or 11
of each).
"""

from __future__ import annotations

import torch

from bitsound.errors import DataError


def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Each example's draw weight for class-balanced sampling with replacement
    (``train.balanced_sampling: true``): one over its class's size, so every class is drawn
    equally often on average.

    Parameters
    ----------
    y : Tensor [shape=(n,)] of int64
        Class index of each training example.

    Returns
    -------
    Tensor [shape=(n,)] of float64
    """
    y = torch.as_tensor(y, dtype=torch.int64)
    if not len(y):
        raise DataError("class-balanced sampling needs at least one training example")
    return 1.0 / torch.bincount(y)[y].double()


def undersampled_epoch_size(y: torch.Tensor) -> int:
    """Examples in one undersampled epoch: ``n_classes * min(class count)`` over the classes present."""
    counts = torch.bincount(y)
    counts = counts[counts > 0]
    if not len(counts):
        raise DataError("class-balanced undersampling needs at least one training example")
    return int(len(counts) * counts.min())


def class_cycle_order(y: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Example indices of one undersampled, class-cycling epoch (see the module docstring).

    Parameters
    ----------
    y : Tensor [shape=(n,)] of int64
        Class index of each training example.
    generator : torch.Generator
        Every random draw comes from it.

    Returns
    -------
    Tensor [shape=(n_classes * min_count,)] of int64
        Round ``r`` (positions ``r * n_classes`` to ``(r + 1) * n_classes - 1``) holds the
        ``r``-th example of each class's shuffled list, classes in a random order.
    """
    classes = torch.unique(y)
    if not len(classes):
        raise DataError("class-balanced undersampling needs at least one training example")
    per_class = [torch.nonzero(y == c).flatten() for c in classes]
    rounds = min(len(idx) for idx in per_class)
    # each class's examples shuffled; the first `rounds` of each are this epoch's subset
    chosen = torch.stack([idx[torch.randperm(len(idx), generator=generator)[:rounds]] for idx in per_class])
    # a random class order in every round: (rounds, n_classes) positions into `chosen`
    class_order = torch.argsort(torch.rand(rounds, len(classes), generator=generator), dim=1)
    return chosen.t().gather(1, class_order).reshape(-1)


__all__ = ["balanced_weights", "class_cycle_order", "undersampled_epoch_size"]
