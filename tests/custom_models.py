"""A user model given by import path (``custom_models:make``) for the profiler tests."""
from torch import nn


def make():
    """Three blocks: a parameter-carrying first block, a parameter-free one, and a head."""
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
