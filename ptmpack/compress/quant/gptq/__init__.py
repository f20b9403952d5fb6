"""GPTQ: second-order weight quantization from calibration activations."""
