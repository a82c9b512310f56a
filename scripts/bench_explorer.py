"""Explorer benchmark: a 512-token input on the embedded model (6 layers x 12 heads) in headless Chromium.

Prints the file size, the time to write it, and, measured in the page, the time from navigation to
the first drawing, to a layer switch, and to the full 72-thumbnail model view. Needs Debian's chromium
and the playwright package (no `playwright install`). Usage:
    python scripts/bench_explorer.py [--screenshots DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()
    import warnings

    from playwright.sync_api import sync_playwright

    from hf_attn_inspect import AttentionInspector
    from hf_attn_inspect.views.explorer import write_explorer
    from test_explorer import long_natural_text

    warnings.simplefilter("ignore")
    inspector = AttentionInspector.from_pretrained(device="cpu")
    result = inspector(long_natural_text(), max_length=512)
    out = Path(tempfile.mkdtemp()) / "long.html"
    t0 = time.perf_counter()
    write_explorer(result, out)
    write_s = time.perf_counter() - t0
    print(f"tokens {result.seq_len}, heads {result.num_layers * result.num_heads}, "
          f"file {out.stat().st_size / 2**20:.2f} MiB (limit 10), written in {write_s:.1f} s")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        marks = "() => ['hai-start', 'hai-parsed', 'hai-ready'].map(n => performance.getEntriesByName(n)[0].startTime)"
        for attempt in ("cold", "warm"):  # the first load also starts the browser's renderer
            page.goto(out.as_uri())
            page.wait_for_selector("body[data-ready='1']", state="attached")
            start, parsed, ready = page.evaluate(marks)
            print(f"{attempt} load: script starts {start / 1e3:.2f} s after navigation, data parsed in "
                  f"{(parsed - start) / 1e3:.2f} s, first drawing at {ready / 1e3:.2f} s")
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.screenshots / "long_head.png"))
        page.click("#tabs button[data-view=matrix]")
        page.wait_for_selector("body[data-rendering='0']", state="attached")
        t0 = time.perf_counter()
        page.select_option("#layer", "4")
        page.wait_for_selector("body[data-rendering='0']", state="attached")
        print(f"layer switch in the matrix view {time.perf_counter() - t0:.2f} s")
        if args.screenshots:
            page.screenshot(path=str(args.screenshots / "long_matrix.png"), full_page=True)
        t0 = time.perf_counter()
        page.click("#tabs button[data-view=model]")
        page.wait_for_selector("#model-grid canvas[data-layer='5'][data-head='11'][data-drawn='1']", state="attached")
        print(f"model view, 72 thumbnails {time.perf_counter() - t0:.2f} s")
        if args.screenshots:
            page.screenshot(path=str(args.screenshots / "long_model.png"), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
