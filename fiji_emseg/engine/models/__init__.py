"""Models: the model configuration, the U-Net and custom architectures, the measured receptive
field, the device choice, and a model on disk (config.json + weights; ONNX metadata and graphs).

May import: ``data``.
"""
