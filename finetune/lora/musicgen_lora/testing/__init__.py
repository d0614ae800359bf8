"""Offline test material: MusicGen checkpoints with random weights, clips with known answers."""
