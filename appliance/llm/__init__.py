"""Language-model serving: weights built from decrypted in-memory buffers, never from files."""
