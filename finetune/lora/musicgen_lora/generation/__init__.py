"""Generating music: prompts and their clips, sampling settings, generation window by window."""
