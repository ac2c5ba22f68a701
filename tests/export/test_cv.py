"""The cross-validation road on phantoms, through the CLI: cv -> study -> fit -> export -> the service.

Small and fast (32 px training, 2 epochs); what it checks is the plumbing that the real study
and the shipped model rely on: folds by patient, every scan scored out of fold, resumable runs,
reduced copies that become their own pixels again, calibration folded into the graph, and weights
that a rerun reproduces bit for bit.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import require_module

torch = require_module("torch")

from model_export.__main__ import main
from model_export.cache import ScanCache, scan_tensor
from model_export.cv import assign_folds, auroc, read_oof
from model_export.errors import DataError
from model_export.final import calibration_from_cv, expected_calibration_error, final_variants, platt, sigmoid
from model_export.fit import predict_logits
from model_export.network import binary_head, build_network
from model_export.pool import EFFUSION, FINDINGS, Downsampled, downsample, pool_tensors, read_pool
from model_export.recipes import resolve
from model_export.study import study_table
from model_export.synthetic import phantom
from service.errors import ServiceError
from service.model import load_model
from service.predictor import score_bytes

FINDINGS_OF = {"effusion": "Effusion|Atelectasis", "nofinding": "No Finding", "other": "Cardiomegaly"}
FAST = ["--set", "epochs=2", "--set", "resolution=32", "--set", "batch_size=8", "--threads", "1"]


def write_pool(root: Path, *, count: int = 9, size: int = 256, seed: int = 0, prefix: int = 0) -> Path:
    """A root in the shared data's layout: <label>/<NIH-style name>.png and labels.csv with findings."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count * 3):
        label = ("effusion", "nofinding", "other")[index % 3]
        patient = f"{prefix + index // 2:08d}"  # two scans per patient, sometimes of two labels
        name = f"{patient}_{index % 2:03d}.png"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(phantom(rng, effusion=label == "effusion", size=size)).save(root / label / name)
        rows.append({"filename": name, "label": label, "finding_labels": FINDINGS_OF[label], "patient_id": patient})
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("pool")
    full = write_pool(base / "full", count=9, size=256, seed=0, prefix=0)
    reduced = write_pool(base / "reduced", count=6, size=64, seed=1, prefix=100)
    return [full, reduced]


@pytest.fixture(scope="module")
def cv_run(roots: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("cv") / "run"
    args = ["cv", *sum((["--data", str(root)] for root in roots), []), "--output", str(output), "--folds", "3", "--bootstrap", "200"]
    main([*args, "--recipe", "findings-aug-ema", *FAST, "--cache-dir", str(output.parent / "cache")])
    return output


def test_every_scan_is_scored_out_of_fold_and_no_patient_spans_two_folds(cv_run: Path, roots: list[Path]) -> None:
    rows = read_oof(cv_run / "oof.csv")
    assert len(rows) == len(read_pool(roots)) == 45
    folds_of_patient: dict[str, set[str]] = {}
    for row in rows:
        folds_of_patient.setdefault(row["patient_id"], set()).add(row["fold"])
    assert all(len(folds) == 1 for folds in folds_of_patient.values())
    report = json.loads((cv_run / "report.json").read_text())
    binary = report["oof"]["effusion_vs_nofinding"]
    assert binary["scans"] == 30 and binary["effusion"] == 15
    low, high = binary["cnn"]["ci95"]
    assert low <= binary["cnn"]["auroc"] <= high
    assert {"cnn", "cnn_top_corners_masked", "reference"} <= binary.keys()
    assert len(report["per_fold"]) == 3 and report["pool"]["patients"] == len(folds_of_patient)


def test_an_interrupted_cv_run_resumes_from_its_finished_folds(cv_run: Path, roots: list[Path]) -> None:
    before = (cv_run / "oof.csv").read_text()
    (cv_run / "report.json").unlink()
    (cv_run / "fold-2.npz").unlink()
    args = ["cv", *sum((["--data", str(root)] for root in roots), []), "--output", str(cv_run), "--folds", "3", "--bootstrap", "200"]
    main([*args, "--recipe", "findings-aug-ema", *FAST, "--cache-dir", str(cv_run.parent / "cache")])
    assert (cv_run / "oof.csv").read_text() == before  # the refitted fold reproduces its logits exactly


def test_fold_option_trains_only_its_fold_and_the_report_waits_for_all(cv_run: Path, roots: list[Path], tmp_path: Path) -> None:
    shared = tmp_path / "shared-run"
    args = ["cv", *sum((["--data", str(root)] for root in roots), []), "--output", str(shared), "--folds", "3", "--bootstrap", "200"]
    args += ["--recipe", "findings-aug-ema", *FAST, "--cache-dir", str(cv_run.parent / "cache")]
    main([*args, "--fold", "1"])
    assert sorted(path.name for path in shared.glob("fold-*")) == ["fold-1.npz"]
    assert not (shared / "report.json").exists()
    for fold in (0, 2):  # as a second process (or machine) would; here from the first run's kept files
        (shared / f"fold-{fold}.npz").write_bytes((cv_run / f"fold-{fold}.npz").read_bytes())
    main(args)
    assert (shared / "oof.csv").read_text() == (cv_run / "oof.csv").read_text()


def test_folds_are_stratified_by_label_and_grouped_by_patient(roots: list[Path]) -> None:
    scans = read_pool(roots)
    folds = assign_folds(scans, 3, seed=0)
    for fold in range(3):
        labels = {scan.label for scan, f in zip(scans, folds) if f == fold}
        assert labels == {"effusion", "nofinding", "other"}
    assert not np.array_equal(folds, assign_folds(scans, 3, seed=1))


def test_a_reduced_copy_becomes_its_own_pixels_again_at_its_resolution(roots: list[Path]) -> None:
    path = next((roots[1] / "effusion").iterdir())
    pixels = np.asarray(Image.open(path), dtype=np.float64)
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    tensor = scan_tensor(path, enlarge=True)
    assert tensor.shape == (1, 256, 256)
    np.testing.assert_allclose(downsample(tensor[None], 64)[0, 0], expected, atol=1e-6)


def test_only_the_pool_enlarges_a_reduced_copy_and_its_cache_folder_says_so(roots: list[Path], tmp_path: Path) -> None:
    """Everywhere else (train, evaluate, the exporter's checks) a 64 px copy is refused, as the service refuses it."""
    small = next((roots[1] / "effusion").iterdir())
    with pytest.raises(ServiceError) as refused:
        scan_tensor(small)
    assert refused.value.code == "image_too_small"
    with pytest.raises(DataError, match="image_too_small"):
        ScanCache(tmp_path / "cache").tensors([small], workers=1)
    enlarging = ScanCache(tmp_path / "cache", enlarge=True)
    assert enlarging.folder != ScanCache(tmp_path / "cache").folder and "repeat-to-256" in enlarging.folder.name
    assert np.array_equal(enlarging.tensors([small], workers=1)[0], scan_tensor(small, enlarge=True))


def test_a_row_cached_before_the_steps_were_recorded_is_decoded_again(roots: list[Path], tmp_path: Path) -> None:
    small = next((roots[1] / "effusion").iterdir())
    legacy = ScanCache(tmp_path / "cache", enlarge=True)
    legacy.tensors([small], workers=1)
    index = json.loads((legacy.folder / "index.json").read_text())
    for entry in index.values():
        del entry["enlarge"]  # the earlier layout, which enlarged small scans for every reader
    (legacy.folder / "index.json").write_text(json.dumps(index))
    legacy.folder.rename(ScanCache(tmp_path / "cache").folder)  # that layout's folder name was the plain one
    with pytest.raises(DataError, match="image_too_small"):
        ScanCache(tmp_path / "cache").tensors([small], workers=1)


def test_training_reads_batches_from_the_cache_with_the_bits_of_the_whole_downsampled_pool(roots: list[Path], tmp_path: Path) -> None:
    """The shipped model's reproduction rests on this: a batch read lazily equals the same rows of `downsample(everything)`."""
    scans = read_pool(roots)
    cached = pool_tensors(scans, tmp_path / "cache", workers=2)
    everything = downsample(np.stack([scan_tensor(Path(scan.path), enlarge=True) for scan in scans]), 64)
    rows = np.array([3, 0, 17, 40, 41])
    view = Downsampled(cached, 64)
    assert np.array_equal(view[np.sort(rows)], everything[np.sort(rows)])
    assert np.array_equal(view.take(rows)[1:3], everything[rows[1:3]]) and view.shape == (len(scans), 1, 64, 64)


def test_findings_become_targets_and_unknown_findings_are_masked(tmp_path: Path) -> None:
    root = tmp_path / "folders"
    for label in ("effusion", "other"):
        (root / label).mkdir(parents=True)
        Image.fromarray(np.arange(256 * 256, dtype=np.uint16).reshape(256, 256).astype(np.uint8)).save(root / label / f"0000000{len(label)}_000.png")
    table = tmp_path / "Data_Entry.csv.gz"
    with gzip.open(table, "wt") as handle:
        handle.write("Image Index,Finding Labels,Patient ID,Patient Age,Patient Gender,View Position\n")
        handle.write("00000008_000.png,Effusion|Mass,8,61,F,AP\n")
    scans = {scan.label: scan for scan in read_pool([root], table)}
    effusion, other = scans["effusion"], scans["other"]
    assert (effusion.view, effusion.sex, effusion.age) == ("AP", "F", 61)
    targets = effusion.finding_targets()
    assert targets[EFFUSION] == 1 and targets[FINDINGS.index("Mass")] == 1 and targets.sum() == 2
    unknown = other.finding_targets()  # "other" without a findings entry: only "no effusion" is known
    assert unknown[EFFUSION] == 0 and np.isnan(np.delete(unknown, EFFUSION)).all()


def test_a_label_that_contradicts_its_findings_or_a_scan_listed_twice_is_refused(roots: list[Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="appears twice"):
        read_pool([roots[0], roots[0]])
    bad = write_pool(tmp_path / "bad", count=1)
    text = (bad / "labels.csv").read_text().replace("No Finding", "Effusion")
    (bad / "labels.csv").write_text(text)
    with pytest.raises(DataError, match="disagrees"):
        read_pool([bad])


def test_the_study_table_pairs_runs_on_the_same_scans(cv_run: Path, roots: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "binary"
    args = ["cv", *sum((["--data", str(root)] for root in roots), []), "--output", str(other), "--folds", "3", "--bootstrap", "200"]
    main([*args, "--recipe", "binary-all", *FAST, "--cache-dir", str(cv_run.parent / "cache")])
    table = study_table([cv_run, other], resamples=200)
    lines = table.splitlines()
    assert len(lines) == 4 and "(baseline)" in lines[2] and "findings-aug-ema" in lines[2]
    assert lines[3].startswith("| binary-all") and " to " in lines[3]
    alien = tmp_path / "alien"
    main(["cv", "--data", str(roots[0]), "--output", str(alien), "--folds", "3", "--bootstrap", "50", "--recipe", "original", *FAST])
    with pytest.raises(DataError, match="same scans"):
        study_table([cv_run, alien], resamples=50)


def test_the_binary_head_is_the_calibrated_sigmoid_of_the_effusion_logit() -> None:
    torch.manual_seed(0)
    network = build_network(outputs=len(FINDINGS)).eval()
    images = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        logit = network(images)[:, EFFUSION]
        head = binary_head(network, EFFUSION, scale=0.7, shift=-1.3)
        probability = torch.softmax(head(images), dim=1)[:, 1]
    torch.testing.assert_close(probability, torch.sigmoid(0.7 * logit - 1.3), atol=1e-6, rtol=1e-5)


def test_the_fast_auroc_is_sklearns_including_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_platt_and_ece_behave_on_known_data() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=20_000) * 2
    labels = (rng.random(20_000) < sigmoid(logits)).astype(int)  # calibrated by construction
    a, b = platt(logits, labels)
    assert a == pytest.approx(1.0, abs=0.06) and b == pytest.approx(0.0, abs=0.06)
    assert expected_calibration_error(labels, sigmoid(logits)) < 0.02
    assert expected_calibration_error(labels, sigmoid(3 * logits)) > 0.05


def test_fit_export_serve_applies_the_cv_calibration_and_reproduces_its_weights(
    cv_run: Path, roots: list[Path], tmp_path: Path
) -> None:
    data = sum((["--data", str(root)] for root in roots), [])
    cache = ["--cache-dir", str(cv_run.parent / "cache")]
    run, model = tmp_path / "final", tmp_path / "model.onnx"
    main(["fit", *data, "--output", str(run), "--recipe", "findings-aug-ema", *FAST, *cache])
    final = json.loads((run / "final.json").read_text())
    assert final["complete"] and len(final["epoch_sha256"]) == 2 and final["cache_dtype"] == "float32"  # what `variants` reads
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and (run / "curves.png").stat().st_size > 0

    rerun = tmp_path / "rerun"
    main(["fit", *data, "--output", str(rerun), "--recipe", "findings-aug-ema", *FAST, *cache, "--stop-after-epochs", "1"])
    assert json.loads((rerun / "final.json").read_text())["epoch_sha256"] == final["epoch_sha256"][:1]
    assert not (rerun / "model.pt").exists()

    with pytest.raises(SystemExit):  # a fit run needs the cv run its calibration comes from
        main(["export", str(run), "--output", str(model)])
    main(["export", str(run), "--cv", str(cv_run), "--output", str(model), "--model-version", "0.0.1-test", *data])
    served = load_model(model, policy="cpu")
    assert (served.contract.model_name, served.contract.model_version) == ("cxr-effusion-final", "0.0.1-test")  # never the shipped name
    calibration = calibration_from_cv(cv_run)
    assert served.contract.threshold == pytest.approx(calibration["threshold"])
    training = served.contract.metadata["training_data"]
    assert training["training_resolution"] == 32 and training["weights_sha256"] == final["sha256"]
    assert len(training["patients"]) == len({scan.patient_id for scan in read_pool(roots)})

    state = torch.load(run / "model.pt", weights_only=True)
    network = build_network(outputs=len(FINDINGS))
    network.load_state_dict(state["model"])
    paths = [next((roots[0] / label).iterdir()) for label in ("effusion", "nofinding", "other")]  # the service takes >= 256 px
    tensors = np.stack([scan_tensor(path) for path in paths])
    logits = predict_logits(network, downsample(tensors, 32), index=EFFUSION)
    a, b = calibration["platt"]["a"], calibration["platt"]["b"]
    probabilities = [score_bytes(served, path.read_bytes(), max_pixels=25_000_000).probability for path in paths]
    np.testing.assert_allclose(probabilities, sigmoid(a * logits + b), atol=1e-4)

    scores = tmp_path / "scores.csv"
    main(["export", str(run), "--cv", str(cv_run), "--output", str(model), "--model-version", "0.0.1-test", *data, "--scores", str(scores)])
    with open(scores, newline="") as handle:
        recorded = list(csv.DictReader(handle))
    assert len(recorded) == 27  # the full-size root only: the service refuses the 64 px copies
    path = roots[0].parent / recorded[0]["file"]
    assert score_bytes(load_model(model, policy="cpu"), path.read_bytes(), max_pixels=25_000_000).probability == pytest.approx(
        float(recorded[0]["probability"]), abs=1e-6
    )
    (report,) = final_variants(model, roots, variants=("fp16",), cache_dir=cv_run.parent / "cache")
    assert [folder.name for folder in (cv_run.parent / "cache").iterdir()] == ["minmax-area256-v1-repeat-to-256-v1-float32"]
    fp16 = model.with_suffix(".fp16.onnx")
    assert report.images == 30 and fp16.exists() == report.offered == (abs(report.auroc - report.fp32_auroc) <= 0.005)
    if report.offered:  # a written variant names the file it came from
        assert load_model(fp16, policy="cpu").contract.metadata["variant"]["source_sha256"] == load_model(model, policy="cpu").sha256


def test_recipes_resolve_overrides_by_type_and_refuse_unknown_fields() -> None:
    recipe = resolve("findings-aug-ema", ["epochs=3", "flip=0", "lowres=false"])
    assert (recipe.epochs, recipe.flip, recipe.lowres) == (3, 0.0, False)
    with pytest.raises(DataError):
        resolve("findings", ["nonsense=1"])
    with pytest.raises(DataError):
        resolve("no-such-recipe")
