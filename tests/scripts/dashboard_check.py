"""Loads the vidmesh dashboard in headless Chromium and checks that it is alive.

Usage: dashboard_check.py URL SCREENSHOT.png NODE_COUNT

Waits until the topology graph has NODE_COUNT nodes, a stage shows a non-zero fps in the graph,
the numbers change between two reads, a preview thumbnail has loaded, the fps chart has a line
and the streams table has a row; then saves a screenshot and prints what it saw as one JSON
line. Exits non-zero (with the reason) when any of that does not happen within a minute.

Uses Debian's chromium and chromium-driver directly (no driver download).
"""

import json
import re
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

TIMEOUT_S = 60


def wait_for(what, check):
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"dashboard check: timed out waiting for {what}")


def graph_fps(driver):
    """fps text of every graph node, by node id."""
    return {
        g.get_attribute("data-id"): g.find_element(By.CSS_SELECTOR, "text.fps").text
        for g in driver.find_elements(By.CSS_SELECTOR, "#graph g.node")
    }


def sample_number(driver):
    m = re.search(r"sample (\d+)", driver.find_element(By.ID, "conn").text)
    return int(m.group(1)) if m else None


def main():
    url, screenshot, node_count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1300"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        wait_for(f"{node_count} graph nodes",
                 lambda: len(driver.find_elements(By.CSS_SELECTOR, "#graph g.node")) == node_count)

        def moving_stage():
            for node, text in graph_fps(driver).items():
                m = re.match(r"([\d.]+) fps", text)
                if m and float(m.group(1)) > 0 and not node.startswith("source."):
                    return node, float(m.group(1))
            return None

        stage, fps = wait_for("a stage with non-zero fps in the graph", moving_stage)
        first_sample = wait_for("a sample number", lambda: sample_number(driver))
        first_frames = driver.find_element(By.ID, "frames").text
        wait_for("the numbers to update",
                 lambda: (sample_number(driver) or 0) > first_sample
                 and driver.find_element(By.ID, "frames").text != first_frames)
        preview_width = wait_for(
            "a loaded preview thumbnail",
            lambda: driver.execute_script(
                "const i = document.querySelector('img.preview');"
                "return i && i.complete ? i.naturalWidth : 0;"))
        wait_for("a line in the fps chart",
                 lambda: driver.find_elements(By.CSS_SELECTOR, "#chart-fps polyline"))
        streams = wait_for("a row in the streams table",
                           lambda: driver.find_elements(By.CSS_SELECTOR, "#streams tr[data-stream]"))
        status = streams[0].find_element(By.CSS_SELECTOR, ".status").text
        health = {
            g.get_attribute("data-id"): g.get_attribute("class")
            for g in driver.find_elements(By.CSS_SELECTOR, "#graph g.node")
        }
        # Let the charts gather a few more points for the picture.
        time.sleep(2)
        driver.save_screenshot(screenshot)
        print(json.dumps({
            "nodes": len(health),
            "moving_stage": stage,
            "fps": fps,
            "first_sample": first_sample,
            "later_sample": sample_number(driver),
            "preview_width": preview_width,
            "stream_status": status,
            "node_classes": health,
        }))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
