"""Regenerate the figures in docs/img from the shipped model and real NIH scans.

    python docs/make_figures.py            # heatmaps.png
    python docs/make_figures.py --ui       # also ui.png (starts the service, drives Chromium)

Uses only the service's own core (decode, preprocess, model, heatmap rendering), so the
figure shows exactly what /predict?heatmap=true returns.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from service.heatmap import render  # noqa: E402
from service.model import load_model  # noqa: E402
from service.predictor import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NIH = ROOT.parent / "shared" / "data" / "nih-train"
MODEL = ROOT / "models" / "cxr-effusion-resnet18.onnx"
SCANS = [
    ("effusion", "00000282_000.png"),
    ("effusion", "00004080_000.png"),
    ("effusion", "00006067_000.png"),
    ("nofinding", "00005813_000.png"),
]


def heatmap_figure(output: Path) -> None:
    model = load_model(MODEL, policy="cpu")
    figure, axes = plt.subplots(2, len(SCANS), figsize=(3.2 * len(SCANS), 6.6))
    for column, (label, name) in enumerate(SCANS):
        prepared = prepare((NIH / label / name).read_bytes(), 25_000_000)
        probabilities, heat = model.predict_with_heatmap(prepared.tensor)
        overlay = Image.open(io.BytesIO(render(prepared.tensor[0, 0], heat[0]).overlay_png))
        axes[0, column].imshow(prepared.tensor[0, 0], cmap="gray")
        axes[0, column].set_title(f"{name}\nNIH label: {label}", fontsize=9)
        axes[1, column].imshow(np.asarray(overlay))
        axes[1, column].set_title(f"P(effusion) = {probabilities[0]:.2f}", fontsize=9)
        for axis in axes[:, column]:
            axis.axis("off")
    figure.suptitle(f"{model.contract.model_name} {model.contract.model_version}: class-activation heatmaps", fontsize=11)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")


def ui_screenshot(output: Path) -> None:
    from playwright.sync_api import sync_playwright

    from testkit.live_server import running_service

    with running_service(MODEL) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 900, "height": 560})
        page.goto(f"{server.url}/ui")
        page.set_input_files("#file", str(NIH / "effusion" / "00000282_000.png"))
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        page.screenshot(path=str(output), full_page=True)
        browser.close()
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ui", action="store_true", help="also take a screenshot of the review page")
    args = parser.parse_args()
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    heatmap_figure(out / "heatmaps.png")
    if args.ui:
        ui_screenshot(out / "ui.png")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
