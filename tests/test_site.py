"""The static web leaderboard in a real headless browser (Debian's chromium + chromedriver via
Selenium): it loads offline without console errors, its tables sort and filter, images load."""
import shutil
import time

import pandas as pd
import pytest
import torch
from torchvision.utils import save_image

from benchmarks import leaderboard, site
from benchmarks.cell import Cell
from benchmarks.store import ResultStore

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
MODELS = ("micro_deit_patch4_32", "micro_swin_patch2_window4_32")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    store = ResultStore(root)
    images = root.parent / "cache" / "grid.pt"
    images.parent.mkdir(exist_ok=True)
    save_image(torch.rand(8, 3, 32, 32), str(images.with_suffix(".png")), nrow=4)
    cells = [(m, meth, s) for m in MODELS for meth in ("gaussian", "psaq-vit") for s in (0, 1, 2)]
    cells += [(MODELS[0], meth, 0) for meth in ("real", "psaq-vit-v2", "clamp-vit")]
    for i, (model, method, seed) in enumerate(cells):
        cell = Cell("classification", model, method, 4, 4, seed=seed, n_eval=100)
        report = {"calibration": f"{method}:32", "n_calib": 32, **({"images": str(images)} if method != "gaussian"
                                                                   else {})}
        store.save(cell, {"status": "ok", "metric": "top1", "fp": {"top1": 84.0},
                          "quant": {"top1": 50.0 + 3 * i if i < 12 else 45.0 - i, "top5": 90.0, "n_eval": 100},
                          "compression": {"mean_w_bits": 4.0, "mean_a_bits": 4.0, "compression_ratio": 7.0 + i / 10,
                                          "size_mb": 0.1, "n_params": 1000, "gbops": 0.1},
                          "report": report, "wall_s": 1.0, "device": "test",
                          "quant_state": {"blocks.0.fc1.weight.bits": torch.tensor(4),
                                          "blocks.0.norm1_out.bits": torch.tensor(8)},
                          "versions": "torch=x commit=0123456789ab", "timestamp": "2026-11-29T00:00:00+00:00"})
    leaderboard.write_csv(store, "classification")
    return store, site.build(store, ("classification",))


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(predicate, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("the page did not get there in time")


def info(browser, table: str) -> str:
    from selenium.webdriver.common.by import By
    return browser.find_element(By.CSS_SELECTOR, f"#{table}_wrapper .dt-info").text


def test_page_loads_offline_sorts_filters_and_shows_images(built, browser):
    from selenium.webdriver.common.by import By
    store, index = built
    browser.get(index.as_uri())
    n_rows = len(pd.read_csv(store.root / "classification.csv"))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#rows-classification_wrapper .dt-info"))
    assert f"of {n_rows} entries" in info(browser, "rows-classification")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    def first_row() -> str:
        return browser.find_element(By.CSS_SELECTOR, "#rows-classification tbody tr").text
    before = first_row()
    headers = browser.find_elements(By.XPATH, "//div[@id='rows-classification_wrapper']"
                                              "//th[normalize-space()='quant_value']")
    order = next(h for h in headers if h.is_displayed()).find_element(By.CSS_SELECTOR, ".dt-column-order")
    order.click()  # ascending
    order.click()  # descending: the best cell first
    wait_for(lambda: first_row() != before)
    best = pd.read_csv(store.root / "classification.csv")["quant_value"].max()
    assert f" {best} " in first_row()  # 83.0: the largest top-1 of the records

    search = browser.find_element(By.CSS_SELECTOR, "#rows-classification_wrapper input[type=search]")
    search.send_keys(MODELS[0])
    wait_for(lambda: "of 9 entries" in info(browser, "rows-classification"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#rows-classification tbody tr")
    assert len(rows) == 9 and all(MODELS[0] in r.text for r in rows)

    link = browser.find_element(By.XPATH, "//table[@id='rows-classification']//a")
    browser.get(link.get_attribute("href"))
    image = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "img.gallery"))
    assert wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", image[0])) > 0


def test_site_rebuilds_byte_identically(built):
    store, index = built
    first = index.read_bytes()
    assert site.build(store, ("classification",)).read_bytes() == first


def test_the_first_screen_is_the_paper_table_with_no_nan_and_no_network(built, browser):
    """What a person sees: the first visible table of classification is the paper-style table of a
    model with a row per method; no 'NaN' on the index or a cell page; every image of a cell page
    loads; nothing is fetched from outside the folder; the cell page says stale and links back."""
    from selenium.webdriver.common.by import By
    _, index = built
    browser.get(index.as_uri())
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#rows-classification_wrapper .dt-info"))
    first = next(t for t in browser.find_elements(By.XPATH, "//table[@id]") if t.is_displayed())
    assert first.get_attribute("id") == "paper-classification-0"
    methods = {r.find_elements(By.TAG_NAME, "td")[0].text for r in first.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert methods == {"real", "gaussian", "psaq-vit", "psaq-vit-v2", "clamp-vit"}
    assert "NaN" not in browser.find_element(By.TAG_NAME, "body").text
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(("file:", "data:", "blob:")) for url in resources), resources
    hidden = browser.find_element(By.ID, "paper-classification-1")
    assert not hidden.is_displayed()  # the other model is behind the selector
    from selenium.webdriver.support.ui import Select
    Select(browser.find_element(By.CSS_SELECTOR, "select.model-select")).select_by_index(1)
    wait_for(hidden.is_displayed)

    link = browser.find_element(By.XPATH, "//table[@id='rows-classification']//a[contains(@href, 'cells/')]")
    browser.get(link.get_attribute("href"))
    body = wait_for(lambda: browser.find_element(By.TAG_NAME, "body").text)
    assert "NaN" not in body and "stale" in body and "wall time" in body and "the other seeds" in body
    assert browser.find_elements(By.CSS_SELECTOR, "svg.bits rect")  # the per-layer bits plot
    for image in browser.find_elements(By.TAG_NAME, "img"):
        assert wait_for(lambda image=image: browser.execute_script("return arguments[0].naturalWidth", image)) > 0
    browser.find_element(By.LINK_TEXT, "back to the leaderboard").click()
    wait_for(lambda: browser.current_url == index.as_uri())
