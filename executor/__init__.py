"""The executor: runs a plan JSON exactly as planned, with PyTorch's own parallel APIs.

Launch with ``torchrun --standalone --nproc-per-node N -m executor --plan plan.json``; see
``executor.main`` for the flags and ``executor.parallel`` for how a layout becomes modules.
Nothing here is imported by planning code: this package imports torch.
"""
