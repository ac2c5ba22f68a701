"""`python -m model_export train|evaluate|export|variants|synth`: the offline road from images to a served model.

    python -m model_export synth data/synthetic --count 40
    python -m model_export train --data data/synthetic --output runs/demo
    python -m model_export evaluate runs/demo
    python -m model_export export runs/demo --output models/demo.onnx
    python -m model_export variants runs/demo --model models/demo.onnx

Heavy libraries are imported by the command that needs them, so `--help` stays quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description="Train, evaluate and export the pleural-effusion ResNet18, or write synthetic phantoms.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model into a run directory",
        description="Train ResNet18 (1 channel, 2 classes) on effusion vs no-finding scans, with a seeded "
        "patient-level train/val/test split, class-weighted cross-entropy, random rotations within "
        "±degrees, AdamW with a one-cycle schedule, and checkpoint selection plus early stopping on "
        "validation AUROC. Mixed precision is used on CUDA.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from model_export.config import TrainConfig, defaults

    default = defaults(TrainConfig)
    train.add_argument("--data", type=Path, help="(required unless --resume) class-folder root (effusion/, nofinding/), or the image root that --labels refers to")
    train.add_argument("--labels", type=Path, help="NIH Data_Entry_2017.csv, or a filename,label,patient_id CSV; images are found by name anywhere under --data")
    train.add_argument("--output", type=Path, required=True, help="run directory (config, split, checkpoints, history, curves)")
    train.add_argument("--epochs", type=int, default=default["epochs"], help="most epochs to train (also the schedule's length)")
    train.add_argument("--max-minutes", type=float, help="stop before an epoch that would end past this many minutes of this invocation (at least one epoch runs)")
    train.add_argument("--batch-size", type=int, default=default["batch_size"], help="images per optimiser step (the global batch: under torchrun split over the ranks)")
    train.add_argument("--learning-rate", type=float, default=default["learning_rate"], help="AdamW peak learning rate of the one-cycle schedule")
    train.add_argument("--weight-decay", type=float, default=default["weight_decay"], help="AdamW weight decay")
    train.add_argument("--class-weights", default=default["class_weights"], help="cross-entropy weights: auto (inverse class frequency in train), none, or W0,W1")
    train.add_argument("--rotation-degrees", type=float, default=default["rotation_degrees"], help="random rotation range ±degrees (the only augmentation)")
    train.add_argument("--rotation-probability", type=float, default=default["rotation_probability"], help="share of training images rotated")
    train.add_argument("--patience", type=int, default=default["patience"], help="stop after this many epochs without a better validation AUROC")
    train.add_argument("--val-fraction", type=float, default=default["val_fraction"], help="share of patients (per class) in validation")
    train.add_argument("--test-fraction", type=float, default=default["test_fraction"], help="share of patients (per class) in test")
    train.add_argument("--official-split", action="store_true", help="NIH's patient-wise test_list.txt (beside --labels) is the test split; validation is --val-fraction of the train_val patients")
    train.add_argument("--seed", type=int, default=default["seed"], help="seed of the split, initial weights, shuffling and rotations")
    train.add_argument("--cache-dir", type=Path, help="where preprocessed tensors are cached (default: <output>/cache)")
    add_scale_options(train, device=default["device"])
    train.add_argument("--resume", action="store_true", help="continue the run in --output from last.pt with its saved settings; only --max-minutes applies anew")

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a run on its validation and test splits",
        description="Choose the threshold by Youden's J on validation, then report test AUROC and average "
        "precision with bootstrap 95% intervals, sensitivity, specificity and the confusion matrix, beside a "
        "logistic regression on 32x32 thumbnails. Writes report.json, report.md, roc.png, pr.png and predictions.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    evaluate.add_argument("run", type=Path, help="run directory written by train")
    evaluate.add_argument("--report-dir", type=Path, help="where to write the report (default: <run>/evaluation)")
    evaluate.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the confidence intervals")
    evaluate.add_argument("--device", default="cpu", help="device for inference: cpu, cuda or auto")

    export = commands.add_parser(
        "export",
        help="export a run's best checkpoint to ONNX, with parity check",
        description="Export best.pt to ONNX (input image [N,1,256,256], output effusion_probability [N]) with the "
        "service's contract in its metadata; the file is published only if the service loads it and ONNX Runtime "
        "matches torch within the tolerance on real images of the run's test and validation splits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument("run", type=Path, help="run directory written by train and evaluated by evaluate")
    export.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    export.add_argument("--cv", type=Path, help="for a `fit` run: the cv run of the same recipe whose out-of-fold logits give calibration and threshold")
    export.add_argument("--data", type=Path, action="append", help="for a `fit` run: data roots whose first scans check parity (default: random tensors)")
    export.add_argument("--scores", type=Path, help="for a `fit` run: write the served probability of every >= 256 px scan of --data to this CSV")
    export.add_argument("--evaluation", type=Path, help="evaluation report.json with the threshold (default: <run>/evaluation/report.json)")
    export.add_argument("--model-name", help="model_name in the contract (default: cxr-effusion-<run folder name>)")
    export.add_argument("--model-version", help="model_version in the contract (default: 0.0.0-dev)")
    export.add_argument("--parity-images", type=int, default=8, help="real images from the test (then validation) split for the parity check")
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |torch - ONNX Runtime| probability difference")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (at least 17)")

    variants = commands.add_parser(
        "variants",
        help="write INT8 (CPU) and FP16 (CUDA) variants of an exported model, if their AUROC holds",
        description="Quantize (INT8, calibrated on the run's training images) or halve (FP16) an exported model, "
        "evaluate it on the run's validation and test splits next to FP32, and write <stem>.<variant>.onnx only when its AUROC "
        "is within 0.005 of FP32's; served with CXR_MODEL_VARIANT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    variants.add_argument("run", type=Path, help="run directory written by train (its split and cached tensors)")
    variants.add_argument("--model", type=Path, required=True, help="the FP32 ONNX file written by export")
    variants.add_argument("--variant", choices=["int8", "fp16"], action="append", help="variant to build (repeatable; default: both)")
    variants.add_argument("--calibration-images", type=int, default=64, help="training images used to calibrate INT8")
    variants.add_argument("--data", type=Path, action="append", help="for a `fit` run: its data roots (calibration and the guard's images)")
    variants.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="for a `fit` run: the pool tensor cache")

    cv = commands.add_parser(
        "cv",
        help="cross-validate a training recipe over the whole labelled pool (patient-level K-fold)",
        description="Patient-level, stratified, seeded K-fold over every scan of the --data roots together: in each fold "
        "fit the recipe on the other folds, score the held-out scans. Writes oof.csv (every scan's out-of-fold logit, also "
        "with the top corners masked, and the 32x32-thumbnail logistic regression's probability fitted in the same folds) "
        "and report.json (AUROCs with patient-bootstrap 95%% CIs, per fold). Finished folds are kept: rerun to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_pool_options(cv)
    cv.add_argument("--output", type=Path, required=True, help="run directory (recipe.json, fold-K.npz, oof.csv, report.json)")
    cv.add_argument("--folds", type=int, default=5, help="K")
    cv.add_argument("--fold", type=int, action="append", dest="only_folds", metavar="I",
                    help="train only fold I (0..K-1, as in fold-I.npz); repeatable. Several processes or machines can share one run "
                    "this way; a run without --fold then writes the report from the kept folds")  # fmt: skip
    cv.add_argument("--bootstrap", type=int, default=2000, help="patient-level bootstrap resamples for the intervals")

    fit = commands.add_parser(
        "fit",
        help="fit a recipe on the whole pool: the shipped model's training run",
        description="Train the recipe on every scan of the --data roots it takes (no split: its evaluation is the recipe's "
        "cross-validation). Writes model.pt and final.json (recipe, pool, training patients, sha256 of the weights after "
        "each epoch). Export it with `export RUN --cv CV_RUN`, which takes calibration and threshold from CV_RUN's "
        "out-of-fold predictions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_pool_options(fit)
    fit.add_argument("--output", type=Path, required=True, help="run directory (model.pt, final.json)")
    fit.add_argument("--stop-after-epochs", type=int, help="stop after this many epochs, recording their weight hashes (reproduction checks)")

    study = commands.add_parser(
        "study",
        help="tabulate cross-validation runs as the ablation table of docs/training.md",
        description="One Markdown row per cv run: OOF AUROCs with 95%% CIs (effusion vs no finding, vs all, native 1024 px), "
        "the thumbnail reference, minutes, and the paired patient-bootstrap difference to the --baseline run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    study.add_argument("runs", type=Path, nargs="+", help="cv run directories")
    study.add_argument("--baseline", type=Path, help="run the differences are measured against (default: the first)")
    study.add_argument("--bootstrap", type=int, default=2000, help="patient-level bootstrap resamples for the paired differences")

    card = commands.add_parser(
        "card",
        help="the model card's evidence from a cv run: card.json, roc.png, reliability.png",
        description="AUROCs with patient-bootstrap CIs, calibration (cross-fitted ECE, reliability plot), the operating "
        "point at the OOF threshold, subgroups (view, sex, age band, native vs reduced copies) and the top-corner "
        "shortcut check, all from the cv run's out-of-fold predictions; copies oof.csv and report.json beside them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    card.add_argument("--cv", type=Path, required=True, help="the shipped recipe's cv run")
    card.add_argument("--output", type=Path, required=True, help="folder to write (models/evaluation for the shipped model)")
    card.add_argument("--bootstrap", type=int, default=2000, help="patient-level bootstrap resamples")

    synth = commands.add_parser(
        "synth",
        help="write synthetic phantoms in the class-folder layout",
        description="Write 1024x1024 grayscale chest phantoms, with (effusion/) and without (nofinding/) an "
        "effusion-like opacity, named synthetic_<class>_<n>.png. Drawings for tests and demos, not radiographs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synth.add_argument("output", type=Path, help="root folder to write effusion/ and nofinding/ into")
    synth.add_argument("--count", type=int, default=40, help="images per class")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.add_argument("--size", type=int, default=1024, help="side in pixels")
    return parser


def add_pool_options(command: argparse.ArgumentParser) -> None:
    """The data and recipe options that `cv` and `fit` share."""
    from model_export.recipes import DEFAULT_RECIPE

    command.add_argument("--data", type=Path, action="append", required=True, help="a root with labels.csv or class folders (effusion/, nofinding/, other/); repeatable")
    command.add_argument("--nih-labels", type=Path, help="NIH's Data_Entry_2017*.csv[.gz]: findings, view, sex and age of NIH file names")
    command.add_argument("--recipe", default=DEFAULT_RECIPE, help="named recipe (model_export/recipes.py)")
    command.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one field of the recipe; repeatable")
    command.add_argument("--seed", type=int, default=0, help="seed of the folds, initial weights, shuffling and augmentation")
    command.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="where preprocessed pool tensors are cached")
    command.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); the weights depend on it bit for bit")
    add_scale_options(command, device="cpu")


def add_scale_options(command: argparse.ArgumentParser, *, device: str) -> None:
    """Options every training command shares: where it runs, how it reads data, where it starts from."""
    from model_export.cache import DTYPES

    command.add_argument("--device", default=device, help="cpu, cuda or auto; under torchrun, cuda means each rank's own GPU (NCCL), cpu means gloo")
    command.add_argument("--workers", type=int, default=2, help="processes that decode new scans into the cache and DataLoader workers that read batches (results do not depend on it)")
    command.add_argument("--init", help="initial weights: a torchvision ResNet18 (ImageNet) state dict or a checkpoint of an earlier run, or `imagenet` (torch's local hub cache; never downloaded); default: random")
    command.add_argument("--cache-dtype", choices=DTYPES, default=DTYPES[0], help="stored dtype of the scan cache: float32 is exact; float16 and uint8 halve and quarter the disk (docs/training.md measures the error)")


def set_threads(threads: int) -> None:
    """One thread per run is fastest on a shared 2-core machine: two OpenMP threads stall whenever one is descheduled."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def current_world(device: str):  # noqa: ANN201  # a model_export.distributed.World; torch loads only here
    """This process's place under torchrun (or the one process), on the asked device."""
    from model_export.distributed import world
    from model_export.train import choose_device

    return world(choose_device(device))


def pool_run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options `cv` and `fit` share (add_pool_options), as their functions' keyword arguments."""
    return {
        "recipe_name": args.recipe + "".join(f" {item}" for item in args.set),
        "nih_labels": args.nih_labels, "seed": args.seed, "cache_dir": args.cache_dir, "cache_dtype": args.cache_dtype,
        "workers": args.workers, "init": args.init, "command": args.command_line,
    }  # fmt: skip


def run_cv(args: argparse.Namespace) -> None:
    from model_export.cv import run_cv as cross_validate
    from model_export.recipes import resolve

    set_threads(args.threads)
    world = current_world(args.device)
    report = cross_validate(
        args.data, resolve(args.recipe, args.set), args.output, folds=args.folds, resamples=args.bootstrap,
        only_folds=args.only_folds, world=world, **pool_run_options(args),
    )  # fmt: skip
    if report is None or not world.is_main:
        return
    row = report["oof"]["effusion_vs_nofinding"]
    print(
        f"OOF AUROC effusion vs no finding {row['cnn']['auroc']:.3f} ({row['cnn']['ci95'][0]:.3f}-{row['cnn']['ci95'][1]:.3f}); "
        f"thumbnail reference {row['reference']['auroc']:.3f}; {report['minutes']['total']:.0f} min; report in {args.output}"
    )


def run_fit(args: argparse.Namespace) -> None:
    from model_export.final import fit_final
    from model_export.recipes import resolve

    set_threads(args.threads)
    world = current_world(args.device)
    summary = fit_final(
        args.data, resolve(args.recipe, args.set), args.output, stop_after_epochs=args.stop_after_epochs, world=world,
        **pool_run_options(args),
    )  # fmt: skip
    if not world.is_main:
        return
    print(f"trained on {summary['scans']} scans for {len(summary['epoch_sha256'])} epochs in {summary['minutes']:.1f} min; run in {args.output}")


def run_study(args: argparse.Namespace) -> None:
    from model_export.study import study_table

    print(study_table(args.runs, baseline=args.baseline, resamples=args.bootstrap))


def run_card(args: argparse.Namespace) -> None:
    from model_export.card import write_card

    evidence = write_card(args.cv, args.output, resamples=args.bootstrap)
    row = evidence["auroc"]["effusion_vs_nofinding"]
    print(f"{evidence['recipe']}: OOF AUROC {row['auroc']:.3f}; ECE {evidence['calibration']['ece_cross_fitted']:.3f}; card in {args.output}")


def run_train(args: argparse.Namespace) -> None:
    from model_export.config import TrainConfig
    from model_export.errors import DataError
    from model_export.train import train

    if args.data is None and not args.resume:
        raise DataError("--data is required to start a run")
    given = {field.name: getattr(args, field.name) for field in fields(TrainConfig)}
    config = TrainConfig(**{key: str(value) if isinstance(value, Path) else value for key, value in given.items()})
    result = train(config, max_minutes=args.max_minutes, resume=args.resume)
    print(
        f"best validation AUROC {result.best_val_auroc:.3f} at epoch {result.best_epoch}; "
        f"{result.epochs_completed} epochs done, stopped by {result.stop_reason}; run in {args.output}"
    )


def run_evaluate(args: argparse.Namespace) -> None:
    from model_export.evaluate import evaluate_run

    report = evaluate_run(args.run, report_dir=args.report_dir, resamples=args.bootstrap, device=args.device)
    test = report["cnn"]["test"]
    print(
        f"test AUROC {test['auroc']:.3f} (95% CI {test['auroc_ci95'][0]:.3f}-{test['auroc_ci95'][1]:.3f}), "
        f"sensitivity {test['sensitivity']:.3f}, specificity {test['specificity']:.3f} at threshold "
        f"{report['threshold']['value']:.4f}; reference AUROC {report['reference']['test']['auroc']:.3f}; "
        f"report in {args.report_dir or args.run / 'evaluation'}"
    )


def run_export(args: argparse.Namespace) -> None:
    from model_export.errors import ExportError
    from model_export.export import export_run

    if args.opset < 17:
        raise ExportError("--opset must be at least 17")
    if (args.run / "final.json").exists():
        from model_export.final import export_final

        if args.cv is None:
            raise ExportError(f"{args.run} is a fit run: pass --cv with the cv run of its recipe (calibration and threshold come from it)")
        result = export_final(
            args.run, args.cv, args.output, model_name=args.model_name, model_version=args.model_version,
            roots=args.data, parity_images=args.parity_images,
        )  # fmt: skip
        print(f"wrote {result.path}: parity max |torch - ONNX Runtime| = {result.max_abs_difference:.2e} on {result.parity_images} images")
        if args.scores:
            from model_export.final import write_scores

            print(f"scored {write_scores(result.path, args.data or [], args.scores)} scans into {args.scores}")
        return
    result = export_run(
        args.run,
        args.output,
        evaluation=args.evaluation,
        model_name=args.model_name,
        model_version=args.model_version,
        parity_images=args.parity_images,
        opset=args.opset,
        tolerance=args.tolerance,
    )
    print(
        f"wrote {result.path}: parity max |torch - ONNX Runtime| = {result.max_abs_difference:.2e} "
        f"on {result.parity_images} real images"
    )


def run_variants(args: argparse.Namespace) -> None:
    from model_export.variants import VARIANTS, build_run_variants

    chosen = tuple(args.variant) if args.variant else VARIANTS
    if (args.run / "final.json").exists():
        from model_export.final import final_variants

        cache_dtype = json.loads((args.run / "final.json").read_text()).get("cache_dtype", "float32")  # older runs: float32
        reports = final_variants(
            args.model, args.data or [], variants=chosen, cache_dir=args.cache_dir, cache_dtype=cache_dtype,
            calibration_images=args.calibration_images,
        )  # fmt: skip
    else:
        reports = build_run_variants(args.run, args.model, chosen, calibration_images=args.calibration_images)
    for report in reports:
        verdict = f"wrote {report.path}" if report.offered else "NOT offered (AUROC moved more than 0.005)"
        print(f"{report.variant}: AUROC {report.auroc:.4f} vs FP32 {report.fp32_auroc:.4f} on {report.images} guard images: {verdict}")


def run_synth(args: argparse.Namespace) -> None:
    from model_export.synthetic import write_dataset

    paths = write_dataset(args.output, count=args.count, seed=args.seed, size=args.size)
    print(f"wrote {len(paths)} synthetic phantoms under {args.output}")


COMMANDS = {"cv": run_cv, "fit": run_fit, "study": run_study, "card": run_card, "train": run_train, "evaluate": run_evaluate, "export": run_export, "variants": run_variants, "synth": run_synth}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["python -m model_export", *(sys.argv[1:] if argv is None else argv)])  # recorded in reports
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("model_export").setLevel(logging.INFO)  # ours, not the exporter's chatter
    from tqdm.contrib.logging import logging_redirect_tqdm

    from model_export.errors import PipelineError

    try:
        with logging_redirect_tqdm():
            COMMANDS[args.command](args)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
