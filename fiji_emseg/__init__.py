"""fiji-emseg: deep-learning segmentation of volume EM for Fiji and the command line.

The engine (``fiji_emseg.engine``) is pure Python; ``fiji_emseg.bridge`` is the only code that
touches Java. The high-level functions below are what the command line and the Fiji scripts call.
"""

from __future__ import annotations

__version__ = "0.1.0"
