"""The Fiji script commands, shipped inside the package as ``fiji_emseg.fiji_scripts``.

``emseg fiji install`` copies the ``*.py`` commands of this folder (not this file) into
``Fiji.app/scripts/Plugins/EM_Segmentation/``. They are not meant to be imported.
"""
