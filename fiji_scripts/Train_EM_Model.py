#@script(language="Python", menuPath="Plugins>EM Segmentation>Train EM Model", headless=true, label="Train EM Model", description="Train a U-Net on an EM stack and one binary mask per class (fiji-emseg)")
#@ ImagePlus (persist=false, label="EM image", required=false, description="The EM stack to learn from (the current image window)") image
#@ String (persist=false, label="Mask windows, one per class", value="", description="Titles of the binary mask windows (0/255), comma-separated, in class order, e.g. mito mask, er mask") masks
#@ String (persist=false, label="Or: EM image file (batch)", value="", description="A TIFF stack; when set it is used instead of the image window") image_file
#@ String (persist=false, label="Or: mask files (batch)", value="", description="Mask files, comma-separated in class order, or a folder of one TIFF per class") mask_files
#@ String (persist=false, label="Class names (optional)", value="", description="Comma-separated, one per mask; default: the mask titles or file names") classes
#@ File (persist=false, label="Model folder", style="directory", description="Where the new model is written (config.json, weights, model.onnx, training log)") model_folder
#@ String (persist=false, label="Output", choices={"sigmoid", "softmax"}, value="sigmoid", description="sigmoid: independent classes that may overlap; softmax: exclusive classes plus background") output
#@ String (persist=false, label="Settings", choices={"auto", "none"}, value="auto", description="auto: planned from the data, this machine and the time budget (the Log says what and why); none: the settings below as given, 0 = the engine's defaults") plan
#@ Double (persist=false, label="Time budget (minutes)", value=30.0, min=0.0, stepSize=5.0, description="auto: training is planned to finish in this time (0: the planner's default, 30 min on a CPU, 15 on a GPU); none: a time limit (0: none)") time_budget
#@ Integer (persist=false, label="Epochs (0: planned)", value=0, min=0, description="0: chosen by the plan (none: 64); any other value overrides the plan") epochs
#@ Integer (persist=false, label="Steps per epoch (0: planned)", value=0, min=0, description="0: chosen by the plan (none: 256)") steps
#@ Integer (persist=false, label="Batch size (0: planned)", value=0, min=0, description="0: chosen by the plan (none: 8)") batch_size
#@ Integer (persist=false, label="Patch size in pixels (0: planned)", value=0, min=0, description="Square training patches, a multiple of 2^(depth-1); 0: chosen by the plan (none: 256)") patch_size
#@ Double (persist=false, label="Learning rate (0: planned)", value=0.0, min=0.0, stepSize=0.0001, style="format:0.0000000", description="0: chosen by the plan (none: 0.001)") learning_rate
#@ String (persist=false, label="Validation slices (from 1, e.g. 13-16)", value="", description="Slices held out to choose the best epoch, numbered from 1 as in Fiji; empty: no validation") validation_slices
#@ String (persist=false, label="Annotated slices (from 1, e.g. 1-16)", value="", description="Only these slices are annotated, numbered from 1; empty: every slice") annotated_slices
#@ Integer (persist=false, label="Network depth in levels (0: planned)", value=0, min=0, max=8, description="0: chosen by the plan (none: 5)") depth
#@ Integer (persist=false, label="Filters in the first level (0: planned)", value=0, min=0, description="0: chosen by the plan, 16 on a CPU, 32 on a GPU (none: 32)") filters
#@ Integer (persist=false, label="Random seed (-1: random, recorded)", value=-1) seed
#@ Boolean (persist=false, label="Use the GPU when there is one", value=true) use_gpu
#@ Boolean (persist=false, label="Replace a model already in the folder", value=false) overwrite
#@output String status
#@output String model_path

# ruff: noqa: F821, N999 -- SciJava injects the #@ inputs as globals; the file name is the menu entry
# Python mode (CPython) only: everything happens in the fiji-emseg package. Under Jython (an old
# Fiji, or Python mode off) the import below fails with ImportError: see the fiji-emseg README.
from fiji_emseg.bridge.commands import train_command

_result = train_command(
    image=image, masks=str(masks), image_file=str(image_file), mask_files=str(mask_files),
    classes=str(classes), model_folder=str(model_folder), output=str(output), plan=str(plan),
    time_budget=float(time_budget), epochs=int(epochs), steps=int(steps), batch_size=int(batch_size),
    patch_size=int(patch_size), learning_rate=float(learning_rate),
    validation_slices=str(validation_slices), annotated_slices=str(annotated_slices), depth=int(depth),
    filters=int(filters), seed=int(seed), use_gpu=bool(use_gpu), overwrite=bool(overwrite),
    module=globals().get("org.scijava.script.ScriptModule"))
status = _result["status"]
model_path = _result["model_path"]
del _result
