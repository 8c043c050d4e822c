"""Inference: the tiled, blended, streaming predictor, its tiling plan, the ONNX Runtime and
PyTorch backends, mask clean-up, and the writers of masks and probabilities.

May import: ``data``, ``models``, ``callbacks``.
"""
