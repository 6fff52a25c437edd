"""Contracts shared by every stage: user errors, atomic files, configs, the run directory."""
