"""PTQ: weight and activation fake-quantization with bias compensation."""
