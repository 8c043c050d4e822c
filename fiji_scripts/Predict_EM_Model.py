#@script(language="Python", menuPath="Plugins>EM Segmentation>Predict EM Model", headless=true, label="Predict EM Model", description="Segment an EM stack (window, file or folder of stacks) with a trained model (fiji-emseg)")
#@ ImagePlus (persist=false, label="EM image", required=false, description="The stack to segment (the current image window)") image
#@ String (persist=false, label="Or: image file or folder (batch)", value="", description="A TIFF stack, a folder of them, or an OME-Zarr / N5 volume of any size; when set it is used instead of the image window and results are written to the output folder") image_file
#@ File (persist=false, label="Model folder", style="directory", required=false, description="A folder written by Train EM Model (or emseg train)") model_folder
#@ File (persist=false, label="Or: model package (.zip, rdf.yaml)", style="open", required=false, description="A bioimage.io model package with ONNX or TorchScript weights (from Package EM Model, deepImageJ or the BioImage Model Zoo); used instead of a model folder") model_package
#@ String (persist=false, label="Output folder (optional for windows)", value="", description="Where <name>_<class>_mask.tif files (or, for an OME-Zarr / N5 input, <name>.ome.zarr) are written; required with an image file") output_folder
#@ Double (persist=false, label="Mask threshold (0: the model's own)", value=0.0, min=0.0, max=0.999, stepSize=0.05, description="For sigmoid models; 0 uses the threshold chosen on validation data at training (else 0.5)") threshold
#@ Integer (persist=false, label="Remove objects smaller than (voxels)", value=0, min=0) min_size
#@ Integer (persist=false, label="Fill holes up to (voxels)", value=0, min=0) fill_holes
#@ Boolean (persist=false, label="Test-time augmentation (slower)", value=false) tta
#@ Boolean (persist=false, label="Show probability maps", value=false) show_probabilities
#@ Boolean (persist=false, label="Show overlay", value=false) show_overlay
#@ Boolean (persist=false, label="Use the GPU when there is one", value=true) use_gpu
#@ Boolean (persist=false, label="Replace existing result files", value=false) overwrite
#@output String status
#@output String mask_titles

# ruff: noqa: F821, N999 -- SciJava injects the #@ inputs as globals; the file name is the menu entry
# Python mode (CPython) only: everything happens in the fiji-emseg package. Under Jython (an old
# Fiji, or Python mode off) the import below fails with ImportError: see the fiji-emseg README.
from fiji_emseg.bridge.commands import predict_command

_result = predict_command(
    image=image, image_file=str(image_file),
    model_folder="" if model_folder is None else str(model_folder),
    model_package="" if model_package is None else str(model_package),
    output_folder=str(output_folder), threshold=float(threshold), min_size=int(min_size),
    fill_holes=int(fill_holes), tta=bool(tta), show_probabilities=bool(show_probabilities),
    show_overlay=bool(show_overlay), use_gpu=bool(use_gpu), overwrite=bool(overwrite),
    module=globals().get("org.scijava.script.ScriptModule"))
status = _result["status"]
mask_titles = _result["mask_titles"]
del _result
