"""A class at once, on loopback: 20 uploads from 10 browser sessions against one real server,
mixing real X-rays with memory bombs, under a stated bound on the server's peak memory.

Every valid upload must get its prediction, every bomb one readable refusal, and the server
process's peak resident memory (VmHWM, read from /proc) must stay under PEAK_BOUND_BYTES.
The run's title is crafted Markdown: no page may turn it into a link.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "tiny_cxr"
MAIN = '[data-testid="stMain"]'
SESSIONS = 10
ROUNDS = 2  # SESSIONS × ROUNDS = 20 uploads
#: The stated bound: the whole server (Streamlit, TensorFlow, the model, 20 uploads).
PEAK_BOUND_BYTES = 3 * 1024**3
ROUND_TIMEOUT_S = float(os.environ.get("XRCOMPARE_LOAD_ROUND_TIMEOUT", "240"))
CRAFTED_TITLE = "[evil link](http://evil.example) **run**"


def _bombs_module():
    spec = importlib.util.spec_from_file_location("decode_memory",
                                                  REPO / "benchmarks" / "decode_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upload_files(folder: Path) -> list[tuple[Path, str]]:
    """20 files and what each must give: "predicted" or "refused"."""
    bombs = _bombs_module()
    xrays = sorted((REPO / "samples").glob("*.jpg")) + sorted(FIXTURES.rglob("*.jpg"))
    files: list[tuple[Path, str]] = [(path, "predicted") for path in xrays[:12]]
    for number in range(4):  # the probe's 16-bit RGBA bomb, 617 kB each
        path = folder / f"bomb-{number}.png"
        path.write_bytes(bombs.memory_bomb_png())
        files.append((path, "refused"))
    for number in range(2):  # a JPEG header announcing 8,000² × 3 × 12 bit
        sof = b"\xff\xc1" + struct.pack(">HBHHB", 17, 12, 8000, 8000, 3) + b"\x01\x11\x00" * 3
        path = folder / f"bomb-{number}.jpg"
        path.write_bytes(b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
                         + b"\x00" * 64 + b"\xff\xd9")
        files.append((path, "refused"))
    for number in range(2):  # big but allowed: 8,000² 16-bit gray (128 MB decoded)
        path = folder / f"big-gray-{number}.png"
        path.write_bytes(bombs.black_png(8000, 8000, 16, 0))
        files.append((path, "predicted"))
    # interleave, so that every round mixes bombs with X-rays
    order = [files[i] for i in (0, 12, 1, 18, 2, 16, 3, 13, 4, 19, 5, 14, 6, 17, 7, 15, 8, 9,
                                10, 11)]
    assert len(order) == SESSIONS * ROUNDS and len({p for p, _ in order}) == len(order)
    return order


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM) plus its children's (none expected)."""
    total = 0
    for process in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) * 1024 if match else 0
    return total


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def outcome(page, name: str) -> str | None:
    """"predicted", "refused" (with the sentence) or None while still working."""
    main = page.locator(MAIN)
    errors = main.locator('[data-testid="stAlertContentError"]')
    for index in range(errors.count()):
        text = errors.nth(index).inner_text()
        if name in text:
            return "refused: " + text
    fresh = main.locator('[data-testid="stCaptionContainer"]', has_text=f"your upload {name}")
    if fresh.count() and main.get_by_text(re.compile(r"only trained model predicts")).count():
        if page.locator('[data-testid="stApp"]').first.get_attribute(
                "data-test-script-state") not in ("running", "rerunRequested"):
            return "predicted"
    return None


@pytest.mark.e2e
@pytest.mark.slow
def test_twenty_concurrent_uploads_with_bombs_stay_under_the_memory_bound(
        tmp_path, start_app_server, browser):
    runs = tmp_path / "runs"
    run = runs / "load-test-run"
    shutil.copytree(REPO / "trained" / "resnet50-seed001-blog", run)
    info = json.loads((run / "run.json").read_text())
    info["display_name"] = CRAFTED_TITLE
    (run / "run.json").write_text(json.dumps(info))
    files = upload_files(tmp_path)

    url = start_app_server({"XRCOMPARE_RUNS_DIR": str(runs), "XRCOMPARE_WORK_SLOTS": "2"})
    pid = start_app_server.server_at(url).process.pid
    contexts = [browser.new_context(viewport={"width": 1280, "height": 900})
                for _ in range(SESSIONS)]
    started = time.monotonic()
    try:
        pages = []
        for context in contexts:
            page = context.new_page()
            page.set_default_timeout(ROUND_TIMEOUT_S * 1000)
            page.goto(f"{url}/predict", wait_until="domcontentloaded")
            pages.append(page)
        for page in pages:
            page.locator(f"{MAIN} h1", has_text="Predict & explain").first.wait_for()
            page.locator(f'{MAIN} [data-testid="stFileUploaderDropzoneInput"]').wait_for(
                state="attached")
        idle_peak = peak_rss_bytes(pid)

        results: dict[str, str] = {}
        for number in range(ROUNDS):
            batch = list(zip(pages, files[number * SESSIONS:(number + 1) * SESSIONS],
                             strict=True))
            for page, (path, _) in batch:  # all sessions upload at once
                page.locator(f'{MAIN} [data-testid="stFileUploaderDropzoneInput"]') \
                    .set_input_files(str(path))
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            waiting = dict(enumerate(batch))
            while waiting and time.monotonic() < deadline:
                for index, (page, (path, _)) in list(waiting.items()):
                    found = outcome(page, path.name)
                    if found:
                        results[path.name] = found
                        del waiting[index]
                time.sleep(0.5)
            if waiting:  # keep what the stuck pages show, for the report
                shots = REPO / "test-artifacts" / "screenshots"
                shots.mkdir(parents=True, exist_ok=True)
                for index, (page, _) in waiting.items():
                    page.screenshot(path=str(shots / f"load-stuck-{number}-{index}.png"))
            assert not waiting, f"no outcome for {[p.name for _, (p, _) in waiting.values()]}"
        seconds = time.monotonic() - started

        for page in pages:  # the crafted title never became a link
            assert page.locator('a[href*="evil.example"]').count() == 0
        peak = peak_rss_bytes(pid)
        shots = REPO / "test-artifacts" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        pages[0].screenshot(path=str(shots / "load-test-session.png"))
    finally:
        for context in contexts:
            context.close()

    for path, expected in files:
        assert results[path.name].startswith(expected), (path.name, results[path.name])
    for path, expected in files:
        if expected == "refused":
            assert "once decoded" in results[path.name] and "256 MB limit" in results[path.name]
    report = {"uploads": len(files), "sessions": SESSIONS, "seconds": round(seconds, 1),
              "idle_peak_mb": round(idle_peak / 2**20), "peak_mb": round(peak / 2**20),
              "bound_mb": round(PEAK_BOUND_BYTES / 2**20)}
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "load-test.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"load test: {report}")
    assert peak < PEAK_BOUND_BYTES, report
