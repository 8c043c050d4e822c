#@script(language="Python", menuPath="Plugins>EM Segmentation>Measure EM Objects", headless=true, label="Measure EM Objects", description="Count objects in masks and measure volume, surface, diameter and shape (fiji-emseg)")
#@ String (persist=false, label="Mask windows (empty: current image)", value="", description="Titles, comma-separated, one per class, e.g. stack pred mito") masks
#@ String (persist=false, label="Or: mask files (batch)", value="", description="A folder of one mask per class or files in class order") mask_files
#@ String (persist=false, label="Class names (optional)", value="", description="Comma-separated; default: from the window titles or file names") classes
#@ Double (persist=false, label="Threshold (0: masks are binary)", value=0.0, min=0.0, description="Foreground = value > threshold, for probability maps; 0 = the masks must be 0/1 or 0/255") threshold
#@ String (persist=false, label="Objects", choices={"auto", "3d", "2d"}, value="auto", description="auto: 3D for stacks, 2D for single images") components
#@ Integer (persist=false, label="Leave out objects smaller than (voxels)", value=0, min=0) min_size
#@ String (persist=false, label="Save table in folder (optional)", value="") output_folder
#@ Boolean (persist=false, label="Replace an existing table file", value=false) overwrite
#@output String status
#@output String table_title

# ruff: noqa: F821, N999 -- SciJava injects the #@ inputs as globals; the file name is the menu entry
# Python mode (CPython) only: everything happens in the fiji-emseg package. Under Jython (an old
# Fiji, or Python mode off) the import below fails with ImportError: see the fiji-emseg README.
from fiji_emseg.bridge.commands import measure_command

_result = measure_command(
    masks=str(masks), mask_files=str(mask_files), classes=str(classes), threshold=float(threshold),
    components=str(components), min_size=int(min_size), output_folder=str(output_folder),
    overwrite=bool(overwrite),
    module=globals().get("org.scijava.script.ScriptModule"))
status = _result["status"]
table_title = _result["table_title"]
del _result
