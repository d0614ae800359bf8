"""The model: loading a checkpoint, LoRA on its decoder, EnCodec codes of audio, the training loss,
offline checkpoints with random weights."""
