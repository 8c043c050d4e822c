#@script(language="Python", menuPath="Plugins>EM Segmentation>Package EM Model", headless=true, label="Package EM Model", description="Write a trained model as a bioimage.io package for deepImageJ, ilastik, napari and the BioImage Model Zoo (fiji-emseg)")
#@ File (persist=false, label="Model folder", style="directory", description="A folder written by Train EM Model (or emseg train)") model_folder
#@ ImagePlus (persist=false, label="Sample EM image", required=false, description="A stack like the training data (the current image window); a crop of it becomes the package's test input and output") image
#@ String (persist=false, label="Or: sample image file (batch)", value="", description="A TIFF stack like the training data; when set it is used instead of the image window") image_file
#@ File (persist=false, label="Package file (.zip)", style="save", description="The bioimage.io package to write, e.g. mito_model.zip") package_file
#@ String (persist=false, label="Authors (comma-separated)", value="", description="Names for the package's authors; empty: 'fiji-emseg user'") authors
#@ String (persist=false, label="Licence (SPDX id)", value="CC-BY-4.0", description="The licence of the weights, e.g. CC-BY-4.0, MIT") license
#@ String (persist=false, label="Description (optional)", value="", description="One sentence on what the model segments and in which data; empty: generated from the model") description
#@ Boolean (persist=false, label="Output masks (thresholds as postprocessing)", value=false, description="Sigmoid models: consumers such as deepImageJ get 0/1 masks at the model's thresholds instead of probability maps") masks
#@ String (persist=false, label="Weight formats (comma-separated)", value="onnx, torchscript, pytorch_state_dict", description="Which weights the package carries: onnx (deepImageJ, ilastik), torchscript, pytorch_state_dict (napari, bioimageio.core); fewer make a smaller package") weights
#@ Integer (persist=false, label="Test crop, Y and X (0: 256; 3D: 96)", value=0, min=0, description="Size in pixels of the centred crop of the sample that becomes the package's test input; rounded to what the model accepts") crop_xy
#@ Integer (persist=false, label="Test crop, slices (3D models; 0: 16)", value=0, min=0, description="Slices in the test crop of a 3D model; 2D models use one slice") crop_z
#@ Boolean (persist=false, label="Replace an existing package file", value=false) overwrite
#@output String status
#@output String package_path

# ruff: noqa: F821, N999 -- SciJava injects the #@ inputs as globals; the file name is the menu entry
# Python mode (CPython) only: everything happens in the fiji-emseg package. Under Jython (an old
# Fiji, or Python mode off) the import below fails with ImportError: see the fiji-emseg README.
from fiji_emseg.bridge.commands import package_command

_result = package_command(
    model_folder="" if model_folder is None else str(model_folder), image=image,
    image_file=str(image_file), package_file="" if package_file is None else str(package_file),
    authors=str(authors), license=str(license), description=str(description), masks=bool(masks),
    weights=str(weights), crop_xy=int(crop_xy), crop_z=int(crop_z), overwrite=bool(overwrite),
    module=globals().get("org.scijava.script.ScriptModule"))
status = _result["status"]
package_path = _result["package_path"]
del _result
