"""The engine: everything fiji-emseg computes, in pure Python (numpy, torch, onnxruntime; no Java).

A volume passes through the stages in this order::

    data ──► models ──► training ──► inference ──► evaluation
    (read,    (build,    (fit on       (tiled,      (F1/IoU, objects,
     samples,  store,     annotated     blended      morphometrics,
     normalise) measure)  slices)       prediction)  overlays)

Imports run downhill in one fixed layering, checked by ``tests/test_layout.py``::

    data  <  models  <  inference  <  evaluation  <  training

Training sits on top because it *uses* the later stages on its validation slices: it runs the
tiled predictor to calibrate mask thresholds and scores epochs with evaluation's metrics. No
stage imports training; inference never imports evaluation. ``callbacks`` (progress events) is
shared by every stage and imports nothing of the engine. ``fiji_emseg.export`` builds on the
engine; the engine never imports ``export``, the CLI, the bridge or any Java.
"""
