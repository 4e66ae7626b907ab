"""Server-wide work slots: at most N decodes/predictions at once, the rest wait their turn."""

from __future__ import annotations

import re
import threading
import time

import pytest

from xrcompare import limits


def test_no_more_than_the_slots_run_at_once_and_waiters_are_told():
    slots = limits.WorkSlots(2)
    running, most, told = [0], [0], []
    lock = threading.Lock()

    def work(number: int) -> None:
        with slots.hold(on_wait=lambda: told.append(number)):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert most[0] == 2 and slots.peak == 2 and slots.busy == 0
    assert len(told) >= 6  # everyone who found both slots taken was told to wait


def test_a_wait_past_the_timeout_gives_one_sentence_and_frees_nothing():
    slots = limits.WorkSlots(1)
    with slots.hold():
        with pytest.raises(limits.ServerBusy, match="stayed busy"):
            with slots.hold(timeout=0.05):
                pass
        assert slots.busy == 1
    with slots.hold():  # the slot came back
        assert slots.busy == 1


def test_an_error_inside_gives_the_slot_back():
    slots = limits.WorkSlots(1)
    with pytest.raises(ValueError), slots.hold():
        raise ValueError("boom")
    assert slots.busy == 0
    with slots.hold(timeout=0.05):
        pass


def test_slot_count_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(limits.SLOTS_VARIABLE, "3")
    assert limits.slot_count() == 3
    for text in ("0", "-4", "many", ""):
        monkeypatch.setenv(limits.SLOTS_VARIABLE, text)
        assert limits.slot_count() == (1 if text in ("0", "-4") else limits.DEFAULT_SLOTS)


def test_the_readme_limits_table_is_the_code():
    from conftest import REPO

    from xrcompare import imaging, uploads

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- serving-limits:start -->")[1].split("<!-- serving-limits:end -->")[0]
    config = (REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8")
    upload_mb = int(config.split("maxUploadSize =")[1].split()[0])
    for text in (f"| upload size | {upload_mb} MB |",
                 f"{imaging.MAX_FILE_BYTES / 1e6:.0f} MB, read no further",
                 f"{imaging.MAX_PIXELS / 1e6:.0f} megapixels",
                 f"| {imaging.MAX_DECODED_BYTES / 1e6:.0f} MB | `imaging.MAX_DECODED_BYTES`",
                 f"longest side {uploads.MAX_SIDE} px",
                 f"| {limits.DEFAULT_SLOTS} (`{limits.SLOTS_VARIABLE}`) |",
                 f"| {limits.WAIT_TIMEOUT_S:.0f} s |"):
        assert text in table, text


def test_a_callback_that_raises_after_the_wait_gives_the_slot_back():
    # Streamlit stops a script for a rerun by raising inside its next st.* call, which can
    # be the "slot is free" callback: the slot must not leak.
    slots = limits.WorkSlots(1)
    release = threading.Event()

    def holder() -> None:
        with slots.hold():
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    while slots.busy == 0:
        time.sleep(0.01)

    def interrupted() -> None:
        raise KeyboardInterrupt("rerun")

    threading.Timer(0.1, release.set).start()
    with pytest.raises(KeyboardInterrupt), slots.hold(on_start=interrupted):
        pass
    thread.join(5)
    assert slots.busy == 0
    with slots.hold(timeout=0.5):  # still available
        pass


def test_the_server_does_not_collect_garbage_after_every_script_run():
    # With TensorFlow loaded a full collection holds the interpreter for 1-2 s; a page polling
    # its background task reruns every second, so with Streamlit's default the task starved
    # (tests/e2e/test_classroom_e2e.py::test_evaluate_a_run_on_an_uploaded_zip never finished).
    from conftest import REPO

    config = (REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8")
    runner = config.split("[runner]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^postScriptGC\s*=\s*false\b", runner, re.MULTILINE)
