"""Training the models: stage 1 learns the VQ-VAE (``vqvae``), stage 2 the two priors on its code
maps (``priors``), and an optional stage 3 fine-tunes a finished model's synthesis on its own,
frozen codes (``synthesis``). Each stage draws random crops from a folder of images (``data``: a
fixed split holds out one image in ten for validation), writes JSON lines of training and
validation metrics (``metrics``), and checkpoints model, optimizer and sampler so a run resumes
exactly (``run``, ``checkpoint``)."""
