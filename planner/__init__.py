"""planner: profile, simulate and plan distributed training layouts."""
__version__ = "0.1.0"
