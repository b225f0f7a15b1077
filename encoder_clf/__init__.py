"""encoder-clf: self-attention text encoders for classification."""
__version__ = "0.1.0"
