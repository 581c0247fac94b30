"""Remake the pictures of the README: docs/demo.png, docs/report.png and docs/app.png.

    .venv/bin/python docs/screenshots.py            # all three
    .venv/bin/python docs/screenshots.py app        # only some: demo, report, app

Everything comes from this repository and its dependencies, offline: the bundled pretrained
EfficientNet-Lite0 and bundled photos, Grad-CAM overlays in one figure, an HTML report, and
the web app served on a free local port. The report and the app are photographed in Debian's
Chromium (``apt-get install chromium``) through Playwright, at the viewport sizes the README's
pictures have. Needs ``pip install -e ".[all,test]"``.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PHOTOS = ["chelsea", "coffee", "grace_hopper"]


def demo(work: Path) -> Path:
    """Grad-CAM of the bundled model on four bundled photos: the photos above, the overlays
    with the predicted class below (what ``camlens demo`` computes, in one 4x2 figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import camlens
    from camlens.demo import _display
    from camlens.models import efficientnet_lite0
    from camlens.models.efficientnet_lite import preprocess
    from camlens.samples import imagenet_classes, photo
    from camlens.viz import figure_to_png_bytes

    names = ["chelsea", "coffee", "flower", "rocket"]
    x = np.stack([preprocess(photo(n)) for n in names])
    exp = camlens.explain(efficientnet_lite0(pretrained=True), x, method="gradcam")
    shown = np.stack([_display(a) for a in x])
    overlays = exp.overlay(shown)
    classes = imagenet_classes()
    fig, axes = plt.subplots(2, 4, figsize=(9, 4.5))
    for i, name in enumerate(names):
        axes[0, i].imshow(shown[i])
        axes[0, i].set_title(name, fontsize=9)
        axes[1, i].imshow(overlays[i])
        axes[1, i].set_title(f"Grad-CAM: {classes[int(exp.class_indices[i])]}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    target = DOCS / "demo.png"
    target.write_bytes(figure_to_png_bytes(fig, dpi=80))
    plt.close(fig)
    return target


def _browser(pw):
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    return pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def report(work: Path) -> Path:
    """A report of three bundled photos, three methods and two metrics, its top part."""
    from playwright.sync_api import sync_playwright

    from camlens.demo import _display
    from camlens.models import efficientnet_lite0
    from camlens.models.efficientnet_lite import preprocess
    from camlens.report import write_report
    from camlens.samples import imagenet_classes, photo

    page_file = work / "report.html"
    write_report(page_file, efficientnet_lite0(pretrained=True), [photo(p) for p in PHOTOS],
                 names=PHOTOS, methods=["gradcam", "gradcam++", "layercam"],
                 metrics=["deletion", "insertion"], top=3, class_names=imagenet_classes(),
                 preprocess=preprocess, display=_display, resize=False,
                 title="EfficientNet-Lite0 (ImageNet)")
    target = DOCS / "report.png"
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1040, "height": 1060})
            page.goto(page_file.as_uri())
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            page.screenshot(path=str(target))
        finally:
            browser.close()
    return target


def app(work: Path) -> Path:
    """The web app with the bundled model, Grad-CAM of the first bundled photo."""
    import uvicorn
    from playwright.sync_api import sync_playwright

    from camlens.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(None, allowed_hosts=["127.0.0.1"]),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.05)
    target = DOCS / "app.png"
    try:
        with sync_playwright() as pw:
            browser = _browser(pw)
            try:
                page = browser.new_page(viewport={"width": 1120, "height": 676})
                page.set_default_timeout(120_000)
                page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}")
                page.wait_for_function("() => !document.querySelector('#explain').disabled")
                page.wait_for_function("() => document.querySelector('#preview').naturalWidth > 0")
                page.click("#explain")
                page.wait_for_function(
                    "() => !document.querySelector('#results').hidden"
                    " && document.querySelector('#overlay').complete"
                    " && document.querySelector('#status').textContent.includes('took')")
                page.screenshot(path=str(target))
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    return target


def main(argv: list[str]) -> int:
    makers = {"demo": demo, "report": report, "app": app}
    wanted = argv or list(makers)
    unknown = [w for w in wanted if w not in makers]
    if unknown:
        print(f"unknown picture(s) {', '.join(unknown)}: choose from {', '.join(makers)}", file=sys.stderr)
        return 2
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            path = makers[name](Path(tmp))
            print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
