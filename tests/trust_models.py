"""User models for the custom-model contract tests (``trust_models:NAME``), good and bad."""
import torch
from torch import nn


class _WithBatch(nn.Module):
    """A CNN that keeps the contract: blocks, its own batch and loss."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)])

    def synthetic_batch(self, batch_size, generator):
        x = torch.randn(batch_size, 3, 8, 8, generator=generator)
        return x, torch.randint(0, 5, (batch_size,), generator=generator)

    def loss(self, outputs, targets):
        return nn.functional.cross_entropy(outputs, targets)


def cnn_with_batch():
    return _WithBatch()


def cnn_sequential():
    """No synthetic_batch: nothing says what image goes in."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


class _Dropped(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.classifier = nn.Linear(8, 3)

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.classifier(x)


def with_embedding_outside_blocks():
    return _Dropped()


class _Doubled(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return 2 * x          # forward() does more than the blocks


def forward_differs():
    return _Doubled()


class _LossOnly(nn.Sequential):
    def loss(self, outputs, targets):
        return outputs.pow(2).mean()


def loss_without_batch():
    return _LossOnly(nn.Linear(8, 8))


class _BadBatch(nn.Sequential):
    def synthetic_batch(self, batch_size, generator):
        return torch.randn(batch_size, 8, generator=generator)      # not (inputs, targets)


def bad_batch():
    return _BadBatch(nn.Linear(8, 8))


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


def tuple_block():
    return nn.Sequential(nn.Linear(8, 8), _Pair(), nn.Linear(8, 8))


def needs_argument(width):
    return nn.Sequential(nn.Linear(width, width))


def returns_int():
    return 3


def raises():
    raise ValueError("boom in the user's factory")
