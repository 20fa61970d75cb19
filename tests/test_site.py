"""The static site of `decoderbench leaderboard --html`: what it writes, and how it behaves in a real browser.

The browser tests drive the distribution's headless Chromium (/usr/bin/chromium with /usr/bin/chromedriver,
Debian's `chromium` and `chromium-driver`, which `.ci/run` installs when it can) through Selenium; where
either is missing they are skipped with the reason. Selenium is never allowed to fetch a browser of its own:
the binary and the driver are given explicitly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from decoderbench.cli import main
from decoderbench.results.store import ResultsStore

from test_leaderboard import N_S, _flagged_rows


def _write(st, rows):
    """Store fake rows under the key of their own columns (the store validates that on reading)."""
    from decoderbench.run.runner import key_of_row

    for row in rows:
        row = {"target_rel_se": 0.01, "min_samples": 1024, "max_samples": 1024, "options": "{}", **row}
        row["key"] = key_of_row(row)
        st.write(row)

CHROMIUM = os.environ.get("DECODERBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DECODERBENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOT = os.environ.get("DECODERBENCH_SITE_SCREENSHOT")  # where to keep the summary page's screenshot


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A store with clean, capped, iteration-capped and imprecise rows, and the site made from it."""
    pytest.importorskip("itables")
    tmp = tmp_path_factory.mktemp("site")
    st = ResultsStore(tmp / "res")
    rows, gone, _ = _flagged_rows()
    _write(st, rows)
    out = tmp / "board"
    assert main(["leaderboard", "--results", str(st.path), "--out", str(out), "--html", "--quiet"]) == 0
    return out / "site", ResultsStore(st.path, create=False).rows(), gone


def test_site_is_one_self_contained_folder(site):
    site_dir, rows, _ = site
    names = sorted(p.relative_to(site_dir).as_posix() for p in site_dir.rglob("*") if p.is_file())
    assert {"index.html", "cells.html", "rows.html"} <= set(names)
    assert {f"figures/loss_vs_r.{x}" for x in ("png", "svg")} <= set(names)
    for page in ("index.html", "cells.html", "rows.html"):
        text = (site_dir / page).read_text()
        # nothing is fetched at view time: no remote script, style sheet, image or module import
        # (itables' fallback text holds plain <a> help links, which load nothing)
        assert not re.search(r"""<(script|img|iframe)[^>]*\ssrc=["']?https?://""", text), page
        assert not re.search(r"""<link[^>]*\shref=["']?https?://""", text), page
        assert not re.search(r"""(import|from)\s*\(?\s*["']https?://""", text), page
        assert "unpkg.com/dt_for_itables" not in text
        for href in re.findall(r'href="([^"#]+)(?:#[^"]*)?"', text):  # every local link resolves
            if not href.startswith(("http://", "https://")):
                assert (site_dir / href).exists(), (page, href)
    index = (site_dir / "index.html").read_text()
    cells = (site_dir / "cells.html").read_text()
    rows_page = (site_dir / "rows.html").read_text()
    for anchor in re.findall(r'href="cells.html#([^"]+)"', index):
        assert f'id="{anchor}"' in cells
    for anchor in re.findall(r'href="rows.html#([^"]+)"', index + cells):
        assert f'id="{anchor}"' in rows_page
    for r in rows:  # each row's parameters, versions and command
        sec = rows_page[rows_page.index(f'id="row-{r["key"]}"'):]
        sec = sec[:sec.index("</section>")]
        assert "decoderbench 0.1.0, torch 2" in sec and json.dumps(r["params"], sort_keys=True).replace('"', "&quot;") in sec
        assert "<dt>command</dt>" in sec
    assert "Not converged or imprecise (ranked nowhere)" in index


def test_site_is_byte_identical_for_the_same_rows(site, tmp_path):
    site_dir, rows, _ = site
    st = ResultsStore(tmp_path / "res")
    _write(st, rows)
    out = tmp_path / "board"
    assert main(["leaderboard", "--results", str(st.path), "--out", str(out), "--html", "--quiet"]) == 0
    for page in ("index.html", "cells.html", "rows.html"):
        a = (site_dir / page).read_text().replace(str(site_dir.parent.parent / "res"), "RES")
        b = (out / "site" / page).read_text().replace(str(st.path), "RES")
        a = a.replace(str(site_dir.parent), "OUT")
        b = b.replace(str(out), "OUT")
        assert a == b, page


# ----------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"no distribution Chromium: needs {CHROMIUM} and {CHROMEDRIVER} "
                    "(Debian: apt-get install chromium chromium-driver; .ci/run does this when it can)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800",
                "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except Exception as exc:  # a browser that cannot start here (e.g. a sandbox without /dev/shm)
        pytest.skip(f"headless Chromium did not start: {str(exc).splitlines()[0]}")
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _open(drv, path: Path):
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get(path.resolve().as_uri())
    # itables turns each table into a DataTable once its (inlined) bundle has loaded
    WebDriverWait(drv, 30).until(lambda d: d.execute_script(
        "return document.querySelectorAll('table.dataTable').length > 0 && "
        "document.querySelectorAll('table[id^=t]:not(.dataTable)').length === 0"))


def _errors(drv) -> list:
    return [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def _column(drv, table, header: str) -> list[str]:
    from selenium.webdriver.common.by import By

    heads = [th.text.strip() for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    i = heads.index(header)
    return [tr.find_elements(By.TAG_NAME, "td")[i].text.strip() for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]


def test_pages_load_without_console_errors_and_figures_render(site, browser):
    from selenium.webdriver.common.by import By

    site_dir, _, _ = site
    for page in ("index.html", "cells.html", "rows.html"):
        _open(browser, site_dir / page)
        assert _errors(browser) == [], page
        assert browser.find_elements(By.CSS_SELECTOR, "table.dataTable")
    _open(browser, site_dir / "index.html")
    imgs = browser.find_elements(By.CSS_SELECTOR, "img.figure")
    assert len(imgs) == 4  # the headline figure leads the page, the other three under "Figures"
    assert imgs[0].get_attribute("data-name") == "headline"
    for img in imgs:  # decoded and laid out: a figure that failed to load has naturalWidth 0
        browser.execute_script("arguments[0].scrollIntoView();", img)
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
        assert img.size["width"] > 100
    browser.execute_script("window.scrollTo(0, 0);")
    if SCREENSHOT:
        Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(SCREENSHOT)


def test_tables_hold_the_stores_numbers_and_sort(site, browser):
    from selenium.webdriver.common.by import By

    from decoderbench.board.leaderboard import aggregate, fmt, select_rows

    site_dir, rows, gone = site
    _open(browser, site_dir / "cells.html")
    agg = aggregate(select_rows(rows))
    cell = ("rug", "float32", N_S, 410, 0.045)
    section = browser.find_element(By.ID, f"cell-ns{N_S}-nd410-p0.045")
    ranked = section.find_elements(By.CSS_SELECTOR, "table.dataTable")[0]
    names = _column(browser, ranked, "decoder")
    expected = [e["decoder"] for e in agg[cell]["scored"]]
    assert names == expected and not set(names) & gone  # ranked as the store says; unranked rows not among them
    losses = _column(browser, ranked, "loss")
    assert [float(x) for x in losses] == [float(fmt(e["loss"])) for e in agg[cell]["scored"]]
    # sorting: click "loss" (ascending, as ranked), then again (descending): the rows reverse
    head = next(th for th in ranked.find_elements(By.CSS_SELECTOR, "thead th") if th.text.strip() == "loss")
    head.click()
    asc = _column(browser, ranked, "decoder")
    head.click()
    desc = _column(browser, ranked, "decoder")
    assert asc == expected and desc == expected[::-1] and desc != asc
    # the unranked rows of this cell are in their own table, with stop reasons
    un = section.find_elements(By.CSS_SELECTOR, "table.dataTable")[1]
    assert set(_column(browser, un, "decoder")) == {u["decoder"] for u in agg[cell]["unconverged"]}
    # the summary: sort by a text column and by a number column
    _open(browser, site_dir / "index.html")
    summary = browser.find_elements(By.CSS_SELECTOR, "table.dataTable")[1]  # [0]: the headline's per-cell table
    before = _column(browser, summary, "decoder")
    next(th for th in summary.find_elements(By.CSS_SELECTOR, "thead th") if th.text.strip() == "decoder").click()
    after = _column(browser, summary, "decoder")
    assert after == sorted(before) and after != before
    assert _errors(browser) == []


def test_committed_site_loads_in_the_browser(browser):
    """The committed default board's site opens without console errors and shows its figures."""
    from selenium.webdriver.common.by import By

    site_dir = Path(__file__).resolve().parents[1] / "leaderboards" / "default" / "site"
    assert (site_dir / "index.html").is_file(), ("no committed site in leaderboards/default: `decoderbench "
                                                 "leaderboard --grid default --html --out leaderboards/default` makes it")
    _open(browser, site_dir / "index.html")
    assert _errors(browser) == []
    assert browser.find_elements(By.CSS_SELECTOR, "img.figure")


def test_html_without_figures_still_writes_the_pages(tmp_path):
    pytest.importorskip("itables")
    rows, _, _ = _flagged_rows()
    st = ResultsStore(tmp_path / "res")
    _write(st, rows)
    assert main(["leaderboard", "--results", str(st.path), "--out", str(tmp_path / "b"), "--html", "--no-figures",
                 "--quiet"]) == 0
    assert "No figures" in (tmp_path / "b" / "site" / "index.html").read_text()
    shutil.rmtree(tmp_path / "b")
