"""The model core, pure PyTorch: config, attention rules, encoder blocks, poolings, the classifier."""
