"""Data: metadata.json, the training dataset, the EnCodec code cache, preparing a collection."""
