"""The networks: the VQ-VAE-2 (config, quantizer, kernels), the PixelSNAIL priors, growing a synthesis."""
