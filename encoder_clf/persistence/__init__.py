"""What goes to disk and comes back, as safetensors + JSON (never pickle).

The saved-model directory, training checkpoints and the BERT import.
"""
