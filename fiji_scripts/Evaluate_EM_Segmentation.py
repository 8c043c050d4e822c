#@script(language="Python", menuPath="Plugins>EM Segmentation>Evaluate EM Segmentation", headless=true, label="Evaluate EM Segmentation", description="F1, IoU, per-slice and per-object scores of a segmentation against a reference (fiji-emseg)")
#@ String (persist=false, label="Reference mask windows", value="", description="Titles, comma-separated, one per class, e.g. mito mask") reference
#@ String (persist=false, label="Predicted mask windows", value="", description="Titles in the same class order, e.g. stack pred mito") prediction
#@ String (persist=false, label="Or: reference files (batch)", value="", description="A folder of one mask per class (matched by file name) or files in class order") reference_files
#@ String (persist=false, label="Or: prediction files (batch)", value="", description="A folder or files, in the same form as the reference files") prediction_files
#@ String (persist=false, label="Class names (optional)", value="", description="Comma-separated; default: from the window titles or file names") classes
#@ String (persist=false, label="Annotated slices (from 1, e.g. 17-20)", value="", description="Only these slices are scored, numbered from 1; empty: every slice") annotated_slices
#@ Double (persist=false, label="Threshold (0: masks are binary)", value=0.0, min=0.0, description="Foreground = value > threshold, for probability maps (e.g. 0.5); 0 = the masks must be 0/1 or 0/255") threshold
#@ String (persist=false, label="Objects", choices={"3d", "2d"}, value="3d", description="Objects are 3D connected components, or 2D components per slice") components
#@ String (persist=false, label="Save tables in folder (optional)", value="") output_folder
#@ Boolean (persist=false, label="Replace existing table files", value=false) overwrite
#@output String status
#@output String table_title

# ruff: noqa: F821, N999 -- SciJava injects the #@ inputs as globals; the file name is the menu entry
# Python mode (CPython) only: everything happens in the fiji-emseg package. Under Jython (an old
# Fiji, or Python mode off) the import below fails with ImportError: see the fiji-emseg README.
from fiji_emseg.bridge.commands import evaluate_command

_result = evaluate_command(
    reference=str(reference), prediction=str(prediction), reference_files=str(reference_files),
    prediction_files=str(prediction_files), classes=str(classes),
    annotated_slices=str(annotated_slices), threshold=float(threshold), components=str(components),
    output_folder=str(output_folder), overwrite=bool(overwrite),
    module=globals().get("org.scijava.script.ScriptModule"))
status = _result["status"]
table_title = _result["table_title"]
del _result
