"""AffineQuant: learned affine transforms with quantization, block by block."""
