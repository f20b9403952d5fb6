"""Weight (and activation) quantization methods and the compressed-tensors layout they write."""
