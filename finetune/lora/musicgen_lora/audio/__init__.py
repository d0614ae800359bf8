"""Audio and its codes: reading any file at the model's rate, MusicGen's code layout and delay
pattern, melody chroma. No model here."""
