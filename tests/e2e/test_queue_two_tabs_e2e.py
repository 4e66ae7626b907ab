"""A teacher and a student in two browser tabs of a real server with its real local Ray: both
queue, both watch the queue with its owners and places, the teacher reorders it and cancels
anyone's request, the student cancels their own and cannot touch the teacher's, and a run
lands in both tabs (issue 18's "Done when").

Everything goes through the sidebar's own controls, in two browser contexts (two people, two
Streamlit sessions). One worker slot, so requests wait: the teacher's first request is a
long blocker (500 epochs on 16 augmented views per image, batch 1) that keeps the slot busy
while the queue is reordered and cancelled; the student's requests are tiny (24 images at
64 px, a few epochs, the session's feature cache) and tell apart by their epochs. The
teacher finally cancels the blocker and the student's request at the front lands.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from .conftest import AppDriver, StreamlitServer
from .test_training_e2e import make_tiny_dataset, screenshot

TEACHER_KEY = "owl-2718-two-tabs"
STUDENT = "Alice"
DATASET = "class_cxr"
JOB_TIMEOUT_MS = 180_000
SHOWN_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def two_tab_server(tmp_path_factory, feature_cache):
    root = tmp_path_factory.mktemp("queue-two-tabs")
    make_tiny_dataset(root / "data" / DATASET)
    folders = {"data": root / "data", "runs": root / "runs", "jobs": root / "jobs"}
    server = StreamlitServer({"XRCOMPARE_DATA_ROOT": str(folders["data"]),
                              "XRCOMPARE_RUNS_DIR": str(folders["runs"]),
                              "XRCOMPARE_JOBS_DIR": str(folders["jobs"]),
                              "XRCOMPARE_CACHE_DIR": str(feature_cache),
                              "XRCOMPARE_TRAIN_SLOTS": "1",
                              "XRCOMPARE_TEACHER_KEY": TEACHER_KEY,
                              "XRCOMPARE_DISPATCHER": "on"})
    try:
        server.wait_ready()
        yield server, folders
    finally:
        engine = json.loads((folders["jobs"] / "engine.json").read_text()) \
            if (folders["jobs"] / "engine.json").is_file() else {}
        server.stop()
        # the app stops the local Ray it started when it exits (with a job still running,
        # Ray drains it for up to 30 s, past the harness's 15 s: a failed test's Ray is
        # stopped here, so nothing is left behind, and the leftover is still reported)
        from xrcompare.ray_engine import leftover_processes, stop_local

        left = (folders["jobs"] / "engine.json").exists()
        if left:
            stop_local(folders["jobs"])
        if engine.get("temp_dir"):
            deadline = time.monotonic() + 30
            while leftover_processes(engine["temp_dir"]) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert leftover_processes(engine["temp_dir"]) == [], "Ray processes left behind"
        assert not left, "the app left its local Ray's engine.json"


# --------------------------------------------------------------------------- helpers


class Tab(AppDriver):
    """One person's tab: the AppDriver's idle signal plus the sidebar's training controls."""

    def __init__(self, browser, base_url: str, name: str):
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        super().__init__(page, base_url)
        self.name = name
        self.sidebar = page.locator('[data-testid="stSidebar"]')
        self.main = page.locator('[data-testid="stMain"]')

    def close(self) -> None:
        self.page.context.close()

    def until(self, check, timeout_ms: int = SHOWN_TIMEOUT_MS, what: str = "") -> None:
        super().until(check, timeout_ms, what)

    def not_seen(self, what: str, timeout_ms: int) -> AssertionError:
        """The timeout's error, with a screenshot and the queue's rows and buttons."""
        screenshot(self.page, f"two-tabs-{self.name}-timeout")
        return AssertionError(f"{self.name}'s tab: {what} not seen within "
                              f"{timeout_ms / 1000:.0f} s; rows {self.waiting_rows()}, "
                              f"buttons {self.buttons('Cancel')}")

    # the form ------------------------------------------------------------------------

    def form(self):
        expander = self.sidebar.locator('[data-testid="stExpander"]',
                                        has_text="New training run")
        start = expander.get_by_role("button", name="Start training")
        if not start.is_visible():  # collapsed while requests wait or run
            self.click_until(expander.locator("summary"), start.is_visible,
                             "the opened training form")
        return expander

    def set_field(self, label: str, value: str) -> None:
        field = self.form().get_by_label(label, exact=True)
        for _ in range(3):
            field.fill(value)
            field.press("Enter")
            self.settle()
            if field.input_value() == value:
                return
        assert field.input_value() == value, f"{label} stayed {field.input_value()!r}"

    def choose(self, container, label: str, option: str) -> None:
        box = container.get_by_role("combobox", name=label)
        choice = self.page.get_by_role("option", name=option, exact=True)
        for _ in range(5):  # the first click may only move focus away from an input
            if box.input_value() == option:
                break
            box.click()
            self.page.wait_for_timeout(300)
            if choice.count():
                try:  # a rerun can close the list under the pointer: open it again
                    choice.click(timeout=5_000)
                except PlaywrightTimeoutError:
                    pass
                self.settle()
        assert box.input_value() == option, f"{label} is {box.input_value()!r}"

    def request(self, run_name: str, epochs: int, batch: int = 4, views: int = 0) -> None:
        """Fill the form and press Start; returns once the request is in the queue."""
        form = self.form()
        self.set_field("Epochs", str(epochs))
        self.set_field("Batch size", str(batch))
        self.set_field("Augmented views", str(views))
        self.choose(form, "Input size", "64 px")
        self.set_field("Run name", run_name)
        assert self.problems() == [], self.problems()
        mine = self.sidebar.get_by_text(re.compile(rf"\b{epochs} epochs\)"))
        self.click_until(form.get_by_role("button", name="Start training"),
                         lambda: mine.count() > 0, f"the {epochs}-epoch request queued")

    # the queue -----------------------------------------------------------------------

    def waiting_rows(self) -> list[str]:
        """The 'Waiting:' list, first to run first, as ``"<place>. <row>"`` (a row is
        markdown's "- 1. ...": its place is the marker of an ordered list inside the bullet,
        the list's ``start``)."""
        rows = self.sidebar.locator("li:not(:has(li))").filter(
            has_text=re.compile(r"waiting \d"))
        try:
            found = rows.evaluate_all(
                "els => els.map(e => [e.closest('ol') ? e.closest('ol').start : 0,"
                " e.innerText])")
        except Exception:  # a rerun replaced the list while it was read
            return []
        return [f"{place}. {' '.join(text.split())}" for place, text in found]

    def waiting_epochs(self) -> list[int]:
        """The epochs of each waiting request (they tell the requests apart), in order;
        empty unless the places read 1, 2, 3..."""
        rows = self.waiting_rows()
        if [row.split(".")[0] for row in rows] != [str(n) for n in range(1, len(rows) + 1)]:
            return []
        return [int(re.search(r"(\d+) epochs", row).group(1)) for row in rows]

    def buttons(self, pattern: str) -> list[str]:
        found = self.sidebar.get_by_role("button", name=re.compile(pattern))
        try:
            texts = found.all_inner_texts()
        except Exception:
            return []
        # without the Material icon's name the button shows before its label
        return [re.sub(r"^(close|stop_circle) ", "", " ".join(text.split())) for text in texts]


# --------------------------------------------------------------------------- the test


@pytest.mark.e2e
@pytest.mark.slow
def test_teacher_and_student_queue_watch_cancel_and_see_a_run_land(two_tab_server, browser):
    from playwright.sync_api import expect

    from xrcompare import jobs
    from xrcompare.runs import list_runs

    server, folders = two_tab_server
    began = time.monotonic()
    teacher = Tab(browser, server.url, "teacher")
    student = Tab(browser, server.url, "student")
    try:
        for tab in (teacher, student):
            tab.open("", wait_for_title=False)
            expect(tab.sidebar.get_by_text("No training job yet.")).to_be_visible(
                timeout=90_000)
            tab.settle()

        # the teacher unlocks the queue's controls with the key, where the sidebar asks
        keys = teacher.sidebar.locator('[data-testid="stExpander"]', has_text="Teacher controls")
        field = keys.get_by_label("Teacher key", exact=True)
        teacher.click_until(keys.locator("summary"), field.is_visible, "the key field")
        field.fill(TEACHER_KEY)
        teacher.click_until(keys.get_by_role("button", name="Unlock teacher controls"),
                            lambda: keys.count() == 0, "the unlocked teacher controls")
        assert teacher.problems() == []
        # the student's tab is not unlocked by it
        expect(student.sidebar.locator('[data-testid="stExpander"]',
                                       has_text="Teacher controls")).to_have_count(1)

        # the teacher's blocker keeps the one slot busy; the first request starts Ray
        teacher.request("blocker", epochs=500, batch=1, views=16)
        # the student types their name once, while Ray starts
        name = student.form().get_by_label("Your name", exact=True)
        name.fill(STUDENT)
        name.press("Enter")
        student.settle()
        # the blocker runs (the first request starts the local Ray: slow on a busy machine)
        expect(teacher.sidebar.get_by_text(re.compile(r"^Training: .*500 epochs"))
               ).to_be_visible(timeout=JOB_TIMEOUT_MS)
        # the student files three tiny requests, told apart by their epochs
        for number, epochs in enumerate((2, 3, 4), start=1):
            student.request(f"s{number}", epochs=epochs)
        # both tabs show the queue, its owners and places; the blocker runs for the teacher
        for tab, who in ((teacher, STUDENT), (student, f"{STUDENT} (you)")):
            tab.until(lambda tab=tab: tab.waiting_epochs() == [2, 3, 4], what="the queue")
            rows = tab.waiting_rows()
            for place, row in enumerate(rows, start=1):
                assert row.startswith(f"{place}. {who} — ResNet50 on {DATASET}"), rows
            expect(tab.sidebar.get_by_text(re.compile(
                r"Training: ResNet50 on class_cxr \(24 images, 500 epochs\) — teacher"))
            ).to_be_visible()
        screenshot(student.page, "two-tabs-student-queued")

        # the teacher moves the student's last request to the front, with the queue's controls
        manage = teacher.sidebar.locator('[data-testid="stExpander"]',
                                         has_text="Manage the queue")
        request = manage.get_by_role("combobox", name="Request")
        teacher.click_until(manage.locator("summary"), request.is_visible, "the queue's controls")
        teacher.choose(manage, "Request", f"3. {STUDENT}: {DATASET}")
        teacher.click_until(manage.get_by_role("button", name="Run next"),
                            lambda: teacher.waiting_epochs() == [4, 2, 3], "the new order")
        # the new order shows in the student's tab too, by its own polling
        student.until(lambda: student.waiting_epochs() == [4, 2, 3],
                      what="the teacher's new order")
        student.settle()
        screenshot(teacher.page, "two-tabs-teacher-reordered")

        # the student has a cancel button per own request, with its place now, and none for
        # the teacher's running request nor the queue's controls
        student.until(lambda: student.buttons("^Cancel") == [
            "Cancel my request (place 1)", "Cancel my request (place 2)",
            "Cancel my request (place 3)"], what="the student's cancel buttons")
        assert student.buttons("Cancel training|teacher") == []
        expect(student.sidebar.locator('[data-testid="stExpander"]',
                                       has_text="Manage the queue")).to_have_count(0)
        with pytest.raises(jobs.NotAllowed):  # nor may the session behind it
            blocker = next(s for s in jobs.all_statuses(folders["jobs"])
                           if s.plan.get("epochs") == 500)
            jobs.request_cancel(blocker.job_id, folders["jobs"], owner_token="another-session")
        # the student cancels their 2-epoch request, now second
        student.click_until(
            student.sidebar.get_by_role("button", name="Cancel my request (place 2)"),
            lambda: 2 not in student.waiting_epochs(), "the cancelled request gone")
        student.until(lambda: student.waiting_epochs() == [4, 3], what="the queue after cancel")
        teacher.until(lambda: teacher.waiting_epochs() == [4, 3],
                      what="the student's cancel in the teacher's tab")

        # the teacher cancels the student's 3-epoch request, then the running blocker
        teacher.settle()
        teacher.choose(manage, "Request", f"2. {STUDENT}: {DATASET}")
        teacher.click_until(manage.get_by_role("button", name="Cancel", exact=True),
                            lambda: teacher.waiting_epochs() == [4], "the teacher's cancel")
        student.until(lambda: student.waiting_epochs() == [4], what="the teacher's cancel")
        stop = teacher.sidebar.get_by_role("button", name="Cancel training")
        teacher.click_until(stop, lambda: teacher.sidebar.get_by_text(
            "Cancelling teacher's training").count() > 0 or teacher.waiting_epochs() == [],
            "the blocker cancelling")

        # the student's request runs and lands: in both tabs, as a run in the picker and the
        # leaderboard, without an error box
        for tab in (student, teacher):
            expect(tab.sidebar.get_by_text("Finished in")).to_be_visible(
                timeout=JOB_TIMEOUT_MS)
            expect(tab.sidebar).to_contain_text("1 new run in the leaderboard")
            expect(tab.sidebar.get_by_text(re.compile(r"1 of 1 runs shown"))).to_be_visible(
                timeout=SHOWN_TIMEOUT_MS)
            expect(tab.main.get_by_text("Leaderboard", exact=True)).to_be_visible(
                timeout=SHOWN_TIMEOUT_MS)
            tab.settle()
            assert tab.problems() == [], (tab.name, tab.problems())
        screenshot(student.page, "two-tabs-student-landed")
        screenshot(teacher.page, "two-tabs-teacher-landed")
    finally:
        teacher.close()
        student.close()
    wall = time.monotonic() - began

    statuses = {s.plan.get("epochs"): s for s in jobs.all_statuses(folders["jobs"])}
    assert {epochs: s.state for epochs, s in statuses.items()} == {
        500: "cancelled", 2: "cancelled", 3: "cancelled", 4: "done"}
    assert {s.owner for s in statuses.values()} == {"teacher", STUDENT}
    assert [run.run_id for run in list_runs(folders["runs"]).runs] == ["s3"]
    assert not list(folders["runs"].glob(".tmp-*"))
    print(f"two-tab queue test: {wall:.0f} s")
