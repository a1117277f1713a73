"""Headless Chromium for the view tests: opens a page from a file with every network request refused, and
returns what rendered, the console's errors and a screenshot. ``python -m tests.browser PAGE.html OUT.png``
takes one screenshot (the README's images in docs/img are made so)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = "chromedriver"
WINDOW = (1280, 1000)


def chromium() -> tuple[str, str] | None:
    """(browser, driver) paths on PATH, or None."""
    browser = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if chromium() is None:
        return "no chromium and chromedriver on PATH (apt-get install chromium chromium-driver; .ci/run does)"
    return None


@dataclass(frozen=True)
class Rendered:
    """What a page showed: element counts by CSS selector, console errors, the PNG, and what ``actions`` returned."""

    counts: dict[str, int]
    errors: tuple[str, ...]
    png: bytes
    value: object = None


class Browser:
    """One headless Chromium with the network off, reused for many pages (a start costs seconds)."""

    def __init__(self, height: int | None = None):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        found = chromium()
        assert found is not None, missing()
        browser, driver_path = found
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                     "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={WINDOW[0]},{height or WINDOW[1]}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))

    def open(self, path: Path, selectors: list[str], *, screenshot_of: str | None = None, actions=None) -> Rendered:
        """Load ``path``; run ``actions(driver)`` (e.g. move a slider; what it returns is kept); count
        ``selectors``; collect the console's errors since the load; screenshot ``screenshot_of`` (or the window)."""
        from selenium.webdriver.common.by import By

        driver = self.driver
        driver.get_log("browser")  # drop what earlier pages logged
        driver.get(path.resolve().as_uri())
        value = actions(driver) if actions is not None else None
        counts = {s: len(driver.find_elements(By.CSS_SELECTOR, s)) for s in selectors}
        errors = tuple(e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR"))
        target = driver.find_element(By.CSS_SELECTOR, screenshot_of) if screenshot_of else None
        png = target.screenshot_as_png if target is not None else driver.get_screenshot_as_png()
        return Rendered(counts, errors, png, value)

    def close(self) -> None:
        self.driver.quit()


def open_page(path: Path, selectors: list[str], *, screenshot_of: str | None = None, height: int | None = None,
              actions=None) -> Rendered:
    """``Browser.open`` in a browser of its own."""
    browser = Browser(height)
    try:
        return browser.open(path, selectors, screenshot_of=screenshot_of, actions=actions)
    finally:
        browser.close()


def share_not_blank(png: bytes) -> float:
    """Share of the screenshot's pixels that are not the page's white background."""
    from io import BytesIO

    from matplotlib.image import imread

    image = imread(BytesIO(png), format="png")[..., :3]  # [h, w, 3] floats in 0..1
    return float((image.min(-1) < 0.95).mean())


if __name__ == "__main__":
    page, out = Path(sys.argv[1]), Path(sys.argv[2])
    selector = sys.argv[3] if len(sys.argv) > 3 else None
    shot = open_page(page, [], screenshot_of=selector, height=int(sys.argv[4]) if len(sys.argv) > 4 else None)
    out.write_bytes(shot.png)
    print(out, f"{share_not_blank(shot.png):.1%} not white", "errors:", shot.errors)
