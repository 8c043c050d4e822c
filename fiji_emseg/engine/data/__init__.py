"""Data: read and write volumes (TIFF, npy, zarr, DeepSCEM HDF5), samples (an image with one mask
per class), normalisation, connected components of masks, synthetic EM, atomic file output.

May import: nothing else of the engine (only ``fiji_emseg.errors``).
"""
