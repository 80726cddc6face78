"""Sizes the explorer and the page work within (no imports: the command line reads them)."""

MAX_TOKENS = 16_384
"""The longest input the explorer takes, whatever the model."""
