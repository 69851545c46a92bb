"""Supervisor for BimanGrasp's main.py: plans rounds, runs them on GPUs, merges datasets."""

__version__ = "0.1.0"
