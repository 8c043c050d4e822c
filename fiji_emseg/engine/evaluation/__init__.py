"""Evaluation: pixel and per-slice metrics, object-level detection, PQ and AJI, morphometrics of
objects, and overlay images of a prediction.

May import: ``data``, ``models``, ``inference`` (it scores what inference wrote; never the reverse).
"""
