"""``emseg train``: train a U-Net on images and per-class mask stacks (or a DeepSCEM dataset)."""

from __future__ import annotations

import argparse

from .common import add_progress_flags, float_range, int_range

HELP = "train a segmentation model on annotated EM stacks"
DESCRIPTION = """\
Train a U-Net on one or more EM stacks with one binary mask stack per class, and save it in
MODEL_DIR (config.json, weights.safetensors, model.onnx, training_log.csv, training_curves.png,
checkpoint.pt). By default the planner chooses the model and schedule from the data, this
machine and the time budget (--time-limit, default 30 min on a CPU) and prints its reasons;
every option you give overrides it. --plan none gives DeepSCEM's published setup (2D residual
U-Net, depth 5, 32 filters; Adam 1e-3, batch 8, 256x256 patches, 64 epochs x 256 steps, Dice
loss) without its defects. Ctrl-C stops cleanly: the best model and a resumable checkpoint stay
on disk.

examples:
  emseg train mito_model --image stack.tif --masks mito.tif --val-slices 12-15 --time-limit 30
  emseg train model --image a.tif --masks a_mito.tif a_er.tif --image b.tif --masks b_mito.tif b_er.tif \\
      --classes mito er --output softmax --epochs 100
  emseg train model --dataset deepscem_train.h5 --val-dataset deepscem_val.h5
  emseg train model --resume            # continue an interrupted run, with the data recorded in model/config.json
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder to write the model into (created; must not hold a model)")
    add_training_arguments(p)
    p.set_defaults(func=run)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Every option of ``emseg train`` after MODEL_DIR (``emseg plan`` takes the same)."""
    d = p.add_argument_group("training data")
    d.add_argument("--image", action="append", metavar="IMAGE", help="EM stack (TIFF, .npy or .zarr); repeat for several samples")
    d.add_argument("--masks", action="append", nargs="+", metavar="MASK",
                   help="one binary mask stack per class (0/1 or 0/255) for the preceding --image")
    d.add_argument("--classes", nargs="+", metavar="NAME", help="class names in mask order (default: mask file names)")
    d.add_argument("--dataset", metavar="H5", help="a DeepSCEM HDF5 dataset instead of --image/--masks")
    d.add_argument("--annotated-slices", metavar="SPEC",
                   help="only these slices are annotated, e.g. '0-11,20' (0-based, inclusive); others are ignored")
    d.add_argument("--annotated", action="append", metavar="MASK",
                   help="mask of the annotated region per --image (voxels outside are ignored)")
    v = p.add_argument_group("validation")
    v.add_argument("--val-slices", metavar="SPEC", help="hold these slices of every training stack out for validation, e.g. '12-15'")
    v.add_argument("--val-image", action="append", metavar="IMAGE", help="separate validation stack (repeatable)")
    v.add_argument("--val-masks", action="append", nargs="+", metavar="MASK", help="its masks, in class order")
    v.add_argument("--val-dataset", metavar="H5", help="DeepSCEM HDF5 validation dataset")
    v.add_argument("--val-steps", type=int_range(0), default=8, help="validation batches per epoch, fixed patches (default 8; 0 = none)")
    m = p.add_argument_group("model")
    m.add_argument("--dims", type=int, choices=(2, 3), help="2D or 3D U-Net (default: planned; 2D with --plan none)")
    m.add_argument("--depth", type=int_range(1, 8), help="levels; depth 5 = four 2x poolings (default: planned; 5 with --plan none)")
    m.add_argument("--filters", type=int_range(1), help="filters of the first level, doubled per level (default: planned; 32 with --plan none)")
    m.add_argument("--blocks", type=int_range(1), default=1, help="blocks per level (default 1)")
    m.add_argument("--convs", type=int_range(1), default=2, help="convolutions per block (default 2)")
    m.add_argument("--plain", action="store_true", help="plain blocks instead of residual blocks")
    m.add_argument("--norm-layer", choices=("batch", "group", "instance", "none"), default="batch",
                   help="normalisation layers (default batch, recalibrated before saving)")
    m.add_argument("--dropout", type=float_range(0.0, 0.99), default=0.0, help="spatial dropout rate per level (default 0)")
    m.add_argument("--kernel-size", type=int_range(1, 15), default=3, help="convolution kernel size (default 3)")
    m.add_argument("--output", choices=("sigmoid", "softmax"), default="sigmoid",
                   help="sigmoid: one independent probability per class (overlapping classes); "
                        "softmax: exclusive classes with background (default sigmoid)")
    m.add_argument("--z-poolings", type=int_range(0, 7), help="3D only: poolings that also halve Z (default: all)")
    m.add_argument("--slice-context", type=int_range(0, 3), metavar="N",
                   help="2.5D: each slice with N neighbouring slices on each side as input channels of a 2D U-Net "
                        "(a 3D model to predict with; implies --dims 3; default 0 = off)")
    m.add_argument("--architecture", default="unet", help="'unet' or 'package.module:builder' for your own torch module")
    m.add_argument("--init-from", metavar="MODEL", help="fine-tune from an existing model folder or a bioimage.io package with a fiji-emseg pytorch_state_dict")
    t = p.add_argument_group("optimisation")
    t.add_argument("--epochs", type=int_range(1), help="epochs (default: planned, and a planned run trains to the end of its time budget; "
                        "64 with --plan none; with --resume: extend the run to this many)")
    t.add_argument("--steps", type=int_range(1), help="steps per epoch (default: planned; 256 with --plan none)")
    t.add_argument("--batch-size", type=int_range(1), help="patches per step (default: planned; 8 with --plan none)")
    t.add_argument("--patch-size", nargs="+", type=int_range(1), default=None, metavar="N",
                   help="patch size: Y X for 2D, Z Y X for 3D (default: planned; 256 256 or 32 128 128 with --plan none)")
    t.add_argument("--loss", choices=("dice", "weighted_dice", "ce", "dice_ce", "focal", "mse"),
                   help="loss function (default: planned, dice_ce; dice with --plan none)")
    t.add_argument("--class-weights", nargs="+", type=float_range(0.0), metavar="W", help="one weight per class for weighted losses")
    t.add_argument("--optimizer", choices=("adam", "adamw"), default="adam", help="optimizer (default adam)")
    t.add_argument("--lr", type=float_range(0.0, low_open=True), help="learning rate (default: planned, 2e-3; 1e-3 with --plan none)")
    t.add_argument("--weight-decay", type=float_range(0.0), default=0.0, help="weight decay (default 0)")
    t.add_argument("--ema", type=float_range(0.0, 1.0), metavar="DECAY",
                   help="validate, keep and save a moving average of the weights with this decay, e.g. 0.999 "
                        "(default 0 = off: on vnc in 30/20 min it gave mito F1 0.896 vs 0.894, membrane 0.878 vs 0.878)")
    t.add_argument("--deep-supervision", type=int_range(0), default=0, metavar="LEVELS",
                   help="also train this many coarser decoder levels through 1×1 heads and their own losses, as nnU-Net "
                        "does; the heads are not saved (default 0 = off: 2 levels gave vnc mito F1 0.892 vs 0.894, "
                        "membrane 0.878 vs 0.876, isbi2012 0.804 vs 0.817)")
    t.add_argument("--schedule", choices=("constant", "plateau", "cosine", "poly"),
                   help="learning-rate schedule (default cosine)")
    t.add_argument("--lr-patience", type=int_range(0), default=4, help="plateau schedule: epochs before reducing (default 4)")
    t.add_argument("--lr-factor", type=float_range(0.0, 1.0, low_open=True), default=0.5, help="plateau schedule: reduction factor (default 0.5)")
    t.add_argument("--min-lr", type=float_range(0.0), default=1e-6, help="lowest learning rate (default 1e-6)")
    t.add_argument("--no-keep-best", action="store_true", help="save the last epoch instead of the best")
    t.add_argument("--monitor", choices=("val_loss", "val_f1"), default="val_loss", help="what 'best' means (default val_loss)")
    t.add_argument("--train-on-validation", action=argparse.BooleanOptionalAction, default=None,
                   help="also train on the validation slices or images (nnU-Net's fold 'all'); their curve then "
                        "measures fit, the last epoch is kept and thresholds stay 0.5 (default off: on vnc and isbi2012 "
                        "it moved F1 by -0.004 to +0.003, within a seed's spread)")
    t.add_argument("--early-stopping", type=int_range(0), default=0, metavar="EPOCHS",
                   help="stop after this many epochs without improvement (default 0 = never)")
    t.add_argument("--time-limit", type=float_range(0.0, low_open=True), metavar="MINUTES",
                   help="time budget: the planner fits the model and schedule into it, training stops at it and the LR "
                        "schedule anneals over it (default: 30 min on a CPU, 15 on a GPU with --plan auto; none with --plan none)")
    t.add_argument("--plan", choices=("auto", "none"), default="auto",
                   help="auto (default): choose 2D/3D, patch, width, batch, loss and steps from the data, this machine "
                        "and the time budget (see 'emseg plan'); every option you give overrides the plan. "
                        "none: DeepSCEM's defaults for every option not given")
    t.add_argument("--label-focus", type=float_range(0.0, 1.0),
                   help="fraction of patches centred on a labelled voxel of a random class (default: planned, 0.5; 0.8 with --plan none)")
    t.add_argument("--hard-fraction", type=float_range(0.0, 0.95), metavar="F",
                   help="error-driven sampling: share of patches centred where the current model is most wrong on the "
                        "training data, re-mined every 2 epochs (default: planned, 0.25 when the budget gives 6 or more "
                        "epochs, else 0; 0 with --plan none)")
    a = p.add_argument_group("augmentation")
    a.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    a.add_argument("--no-flips", action="store_true", help="no flips")
    a.add_argument("--no-rot90", action="store_true", help="no 90-degree rotations")
    a.add_argument("--brightness", type=float_range(0.0), default=0.1, help="max brightness shift (default 0.1)")
    a.add_argument("--contrast", type=float_range(0.0), default=0.15, help="max relative contrast change (default 0.15)")
    a.add_argument("--gamma", type=float_range(0.0), default=0.2, help="max log-gamma change (default 0.2)")
    a.add_argument("--noise", type=float_range(0.0), default=0.03, help="max Gaussian noise sigma (default 0.03)")
    a.add_argument("--spatial", type=float_range(0.0, 1.0), default=0.0, metavar="P",
                   help="share of patches given a random rotation, zoom and elastic deformation (default 0: on "
                        "isbi2012 in 15 min, 0.5 gave F1 0.807 against 0.810)")
    n = p.add_argument_group("normalisation")
    n.add_argument("--normalization", choices=("percentile", "minmax", "fixed", "none"), default="percentile",
                   help="intensity normalisation (default percentile 1-99.8; minmax = DeepSCEM's)")
    n.add_argument("--norm-low", type=float_range(), help="low percentile (or value, for fixed); default 1")
    n.add_argument("--norm-high", type=float_range(), help="high percentile (or value, for fixed); default 99.8")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int_range(0, 2**32 - 1), help="random seed (default: drawn and recorded)")
    r.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N, mps")
    r.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto", help="mixed precision (default auto: on for GPUs)")
    r.add_argument("--threads", type=int_range(1, 1024), help="CPU threads (default: all)")
    r.add_argument("--deterministic", action="store_true", help="deterministic GPU kernels (slower)")
    r.add_argument("--bn-recalibration", type=int_range(0), default=16, metavar="BATCHES",
                   help="batches used to re-estimate BatchNorm statistics before each validation (default 16; 0 = off)")
    r.add_argument("--checkpoint-minutes", type=float_range(0.0, low_open=True), default=10.0, help="minutes between mid-epoch checkpoints (default 10)")
    r.add_argument("--resume", action="store_true", help="continue the interrupted training in MODEL_DIR, with its settings and (unless given again) the data files recorded there")
    r.add_argument("--overwrite", action="store_true", help="replace a model already in MODEL_DIR")
    r.add_argument("--no-export", action="store_true", help="do not export model.onnx after training")
    r.add_argument("--fp16-export", action="store_true", help="also export a half-precision model.fp16.onnx for GPUs")
    r.add_argument("--no-int8", action="store_true",
                   help="do not write model.int8.onnx (int8 copy for fast CPU prediction, calibrated on the "
                        "training data and used only when its masks agree with fp32 to >= 0.99 Dice)")
    r.add_argument("--trust-custom-code", action="store_true", help="allow --init-from models with custom architectures")
    add_progress_flags(p)


def run(args: argparse.Namespace) -> int:
    from ..api import TrainRequest, train
    from ..engine.callbacks import TqdmTrainingCallback

    request = TrainRequest.from_cli(args)
    result = train(request, callbacks=[TqdmTrainingCallback(disable=args.quiet)])
    print(result.summary())
    for kind in ("onnx", "int8"):
        if kind in result.files:
            print(f"exported {result.files[kind]}")
    return 0 if result.status != "interrupted" else 130

