"""ONNX export with metadata and verification (``onnx_export``), and verified int8 copies (``quantize``)."""
