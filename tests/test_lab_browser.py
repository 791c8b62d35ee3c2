"""The live notebook experience where users have it: a real JupyterLab in a real browser.

Starts ``jupyter lab`` on 127.0.0.1 with a fresh token, a temporary working directory and
temporary Jupyter config, data and runtime directories (and HOME), opens
``tests/notebooks/live_dashboard.ipynb`` in Debian's headless Chromium through Playwright, runs
its cells one at a time and checks the page: the dashboard renders once; its counters change
while the simulated run goes on; pause drains the requests in flight to zero and resume starts
them again; a worker count changed in the widget reaches the run's event log; the Altair charts
draw SVG marks; the browser console stays free of errors.

Every wait is a bounded poll on page state (``wait_for_function``); nothing asserts on elapsed
time.  Skipped, saying why, where Chromium, Playwright or JupyterLab is missing (``make test``
installs all three where it can).  Playwright drives the Chromium found on the machine; it never
downloads a browser.  With ``FLASHEVOLVE_SCREENSHOTS=DIR`` the screenshots go to DIR (e.g.
``docs/images``), else to the test's temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "tests" / "notebooks" / "live_dashboard.ipynb"
sys.path.insert(0, str(ROOT / "scripts"))
from check_report import CHROMIUM_FLAGS, find_chromium  # noqa: E402

CHROMIUM = find_chromium()
MISSING = [name for name in ("playwright", "jupyterlab") if importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (apt-get install -y chromium, or `make browser` as "
        "root); the JupyterLab browser test is skipped",
    ),
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"{' and '.join(MISSING)} not installed (pip install -e '.[dev,lab]'); "
        "the JupyterLab browser test is skipped",
    ),
]

START_S = 120.0  # JupyterLab and a kernel starting on a busy 2-core machine
STEP_S = 60.0  # any one thing the page should show after an action
POLL_MS = 100


# -- the JupyterLab server ---------------------------------------------------------------------
@dataclass
class Lab:
    url: str  # ends with "/"
    token: str
    workdir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _isolated_env(home: Path) -> dict[str, str]:
    """Nothing from the user's home: Jupyter's config, data and runtime dirs, IPython's, and
    HOME itself point into the test's directory; the kernel imports this checkout."""
    dirs = {
        "HOME": home,
        "JUPYTER_CONFIG_DIR": home / "jupyter-config",
        "JUPYTER_DATA_DIR": home / "jupyter-data",
        "JUPYTER_RUNTIME_DIR": home / "jupyter-runtime",
        "IPYTHONDIR": home / "ipython",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    # the closed network refuses JupyterLab's news feed: do not ask about it
    settings = dirs["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings" / "@jupyterlab"
    notification = settings / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "IPYTHON"))}
    env.update({k: str(v) for k, v in dirs.items()})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def _wait_for_server(runtime: Path, process: subprocess.Popen[bytes], log: Path, token: str) -> str:
    """The server's URL, once its info file is written and its API answers (bounded poll)."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"jupyter lab exited with {process.returncode}:\n{log.read_text()}"
            )
        for info_file in runtime.glob("jpserver-*.json"):
            url = json.loads(info_file.read_text())["url"]
            try:
                req = urllib.request.Request(
                    url + "api/status", headers={"Authorization": f"token {token}"}
                )
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        return url
            except OSError:
                pass  # not listening yet
        time.sleep(0.2)  # readiness polling of a starting server, bounded by START_S
    raise AssertionError(f"jupyter lab did not answer within {START_S:.0f} s:\n{log.read_text()}")


def _children(pid: int) -> set[int]:
    pids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(NOTEBOOK, workdir / NOTEBOOK.name)
    env = _isolated_env(tmp_path / "home")
    token = secrets.token_hex(24)
    log = tmp_path / "jupyter-lab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0", "--ServerApp.allow_root=True",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells by command
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = _wait_for_server(Path(env["JUPYTER_RUNTIME_DIR"]), process, log, token)
        server = Lab(url, token, workdir, log, process)
        yield server
        kernels = _children(process.pid)  # the kernel processes the server started
        assert kernels, "jupyter lab has no child process: where did the notebook's kernel run?"
        server.api("api/shutdown", method="POST")  # shuts the kernels down, then itself
        assert process.wait(timeout=60) == 0, server.log_tail()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in kernels) and time.monotonic() < deadline:
            time.sleep(0.1)  # kernels exiting after the server: bounded readiness poll
        assert not [p for p in kernels if _alive(p)], "a kernel outlived jupyter lab"
    finally:
        if process.poll() is None:  # only on a failure above: nothing of ours may linger
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


# -- the page ----------------------------------------------------------------------------------
# Reads the first dashboard's numbers from the data-fe cells the widget writes.
READ_DASHBOARD = """() => {
  const boards = document.querySelectorAll('.fe-dashboard');
  if (!boards.length) return null;
  const cell = (key) => boards[0].querySelector(`[data-fe="${key}"]`);
  const text = (key) => (cell(key) ? cell(key).textContent.trim() : null);
  const number = (key) => (text(key) === null ? null : parseFloat(text(key)));
  const pause = boards[0].querySelector('.fe-pause');
  return {
    boards: boards.length, state: text('state'), proposals: number('proposals'),
    accepted: number('accepted'), in_flight: number('in_flight'), best_score: text('best_score'),
    validate_workers: text('workers-validate'), pause_label: pause ? pause.textContent.trim() : null,
    message: (boards[0].querySelector('.fe-message') || {}).textContent || '',
  };
}"""

# The notebook's cell whose source contains a marker: its index, outputs and whether it ran.
CELL_STATE = """(marker) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets;
  const index = cells.findIndex((c) => c.model.sharedModel.getSource().includes(marker));
  if (index < 0) return {index};
  const cell = cells[index];
  return {index, count: cell.model.executionCount, outputs: cell.model.outputs.toJSON(),
          text: cell.node.querySelector('.jp-OutputArea') ?
                cell.node.querySelector('.jp-OutputArea').innerText : ''};
}"""

# Marks Vega drew as SVG in a cell's output: shapes inside role-mark groups (not axes, legends).
COUNT_MARKS = """(marker) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cell = panel.content.widgets.find((c) => c.model.sharedModel.getSource().includes(marker));
  const svg = cell && cell.node.querySelector('.jp-OutputArea svg.marks');
  if (!svg) return {marks: 0, title: null};
  const shapes = 'path, rect, circle, line, text, polygon, polyline, ellipse, image';
  const marks = [...svg.querySelectorAll('g.role-mark')]
    .reduce((n, g) => n + [...g.children].filter((c) => c.matches(shapes)).length, 0);
  const title = svg.querySelector('.role-title-text');
  return {marks, title: title ? title.textContent : ''};
}"""


class Page:
    """The notebook open in JupyterLab, with bounded waits that fail with what the page showed."""

    def __init__(self, page: Any, shots: Path) -> None:
        self.page = page
        self.shots = shots
        self.started = time.monotonic()
        self.console_errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda err: self.console_errors.append(f"page error: {err}"))

    def until(self, predicate: str, what: str, arg: Any = None, timeout_s: float = STEP_S) -> Any:
        """Poll ``predicate(dashboard, arg)`` (JavaScript) until it is truthy; returns the
        dashboard as read then."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        js = f"([arg]) => {{ const d = ({READ_DASHBOARD})(); return d && ({predicate})(d, arg) && d; }}"
        try:
            handle = self.page.wait_for_function(
                js, arg=[arg], timeout=timeout_s * 1000, polling=POLL_MS
            )
        except PlaywrightTimeout:
            self.page.screenshot(path=str(self.shots / "failure.png"))
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}; the dashboard showed "
                f"{self.dashboard()} (screenshot: {self.shots / 'failure.png'})"
            ) from None
        self.progress(what)
        return handle.json_value()

    def progress(self, what: str) -> None:
        """Where the test got to (shown on a failure: which step was slow or stuck)."""
        print(f"[{time.monotonic() - self.started:6.1f} s] {what}")

    def dashboard(self) -> dict[str, Any] | None:
        return self.page.evaluate(READ_DASHBOARD)

    def open_notebook(self, url: str, token: str, name: str) -> None:
        self.page.goto(f"{url}lab/tree/{name}?token={token}")
        self.page.wait_for_function(
            """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                       const kernel = w && w.sessionContext && w.sessionContext.session
                                      && w.sessionContext.session.kernel;
                       return kernel && kernel.status === 'idle'; }""",
            timeout=START_S * 1000,
            polling=POLL_MS,
        )
        self.progress("notebook open, kernel idle")

    def run_cell(self, marker: str, timeout_s: float = STEP_S) -> dict[str, Any]:
        """Run the cell whose source contains ``marker`` and wait until it has finished; fails
        on an error output.  Returns its outputs and rendered output text."""
        index = self.page.evaluate(CELL_STATE, marker)["index"]
        assert index >= 0, f"no cell in the notebook contains {marker!r}"
        self.page.evaluate(
            """(index) => { const app = window.jupyterapp;
                            app.shell.currentWidget.content.activeCellIndex = index;
                            void app.commands.execute('notebook:run-cell'); }""",
            index,
        )
        self.page.wait_for_function(
            f"(marker) => ({CELL_STATE})(marker).count !== null",
            arg=marker,
            timeout=timeout_s * 1000,
            polling=POLL_MS,
        )
        self.progress(f"ran the cell with {marker!r}")
        state = self.page.evaluate(CELL_STATE, marker)
        errors = [o for o in state["outputs"] if o.get("output_type") == "error"]
        assert not errors, f"cell {marker!r} raised: " + "\n".join(
            "\n".join(e.get("traceback", [])) for e in errors
        )
        return state

    def marks(self, marker: str, what: str) -> dict[str, Any]:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            handle = self.page.wait_for_function(
                f"(marker) => {{ const m = ({COUNT_MARKS})(marker); return m.marks > 1 && m; }}",
                arg=marker,
                timeout=STEP_S * 1000,
                polling=POLL_MS,
            )
        except PlaywrightTimeout:
            state = self.page.evaluate(CELL_STATE, marker)
            raise AssertionError(
                f"the {what} drew no marks within {STEP_S:.0f} s; its output shows "
                f"{state['text'][:500]!r} from {json.dumps(state['outputs'])[:500]}"
            ) from None
        self.progress(f"the {what} drew")
        return handle.json_value()

    def shot(self, selector: str, name: str) -> Path:
        path = self.shots / name
        self.page.locator(selector).first.screenshot(path=str(path))
        return path


def _screenshot_dir(tmp_path: Path) -> Path:
    wanted = os.environ.get("FLASHEVOLVE_SCREENSHOTS")
    target = (
        (ROOT / wanted if not Path(wanted).is_absolute() else Path(wanted)) if wanted else tmp_path
    )
    target.mkdir(parents=True, exist_ok=True)
    return target


def _chart_of(marker: str) -> str:
    """A selector for the chart in the output of the code cell whose text contains ``marker``."""
    return f'.jp-CodeCell:has-text("{marker}") .jp-OutputArea .vega-embed'


# -- the test ----------------------------------------------------------------------------------
# Above the suite's 300 s: every step has its own bound, and on a loaded 2-core machine the
# sum of a JupyterLab start, a kernel start and a dozen steps can pass 300 s without anything
# being wrong (unloaded it takes about 30 s).
@pytest.mark.timeout(900)
def test_live_dashboard_in_jupyterlab(lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    shots = _screenshot_dir(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = Page(browser.new_page(viewport={"width": 1280, "height": 900}), shots)
            page.open_notebook(lab.url, lab.token, NOTEBOOK.name)
            _drive(page)
        finally:
            browser.close()
    assert not page.console_errors, "the browser console reported errors:\n" + "\n".join(
        page.console_errors
    )


def _drive(page: Page) -> None:
    # the dashboard renders, once (the cell's last line returns the board it displayed)
    page.run_cell("evolver.dashboard()")
    first = page.until("(d) => d.state === 'running'", "the dashboard to show the running run")
    assert first["boards"] == 1, f"{first['boards']} dashboards for one dashboard() call"

    # its counters move while the run goes on
    page.until("(d) => d.in_flight > 0", "requests in flight")
    page.until("(d, p) => d.proposals >= p + 2", "proposals to grow", first["proposals"])
    page.until("(d, a) => d.accepted > a", "an accepted proposal", first["accepted"])
    seeded = page.until("(d) => /\\d/.test(d.best_score)", "a best score")
    page.until("(d, b) => /\\d/.test(d.best_score) && d.best_score !== b", "a better best score",
               seeded["best_score"])  # fmt: skip
    page.shot(".fe-panel", "lab-dashboard.png")
    page.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # room for the notebook
    page.page.locator(".fe-dashboard").scroll_into_view_if_needed()
    page.page.screenshot(path=str(page.shots / "lab-notebook.png"))

    # pause: no new work, what is in flight finishes -> zero requests in flight
    page.page.locator(".fe-pause").click()
    paused = page.until("(d) => d.state === 'paused' && d.in_flight === 0 && "
                        "d.pause_label === 'resume'", "pause to drain the requests in flight")  # fmt: skip
    # resume: requests go out again and proposals keep coming
    page.page.locator(".fe-pause").click()
    page.until("(d) => d.state === 'running' && d.in_flight > 0", "resume to restart requests")
    page.until("(d, p) => d.proposals > p", "proposals after resuming", paused["proposals"])

    # a worker count changed in the widget is applied to the run and logged as an event
    field = page.page.locator(".fe-workers-validate input")
    field.fill("6")
    field.press("Enter")
    page.page.locator(".fe-apply").click()
    page.until("(d) => d.message.includes('applied: validate 6')", "the apply message")
    page.until("(d) => /\\/6$/.test(d.validate_workers)", "validate to run 6 workers")
    logged = page.run_cell('pl.col("kind") == "workers_changed"')
    assert "workers_changed validate -> 6 (set by user)" in logged["text"], logged["text"]

    # the Altair charts draw (offline: no CDN on this network) while the run goes on
    for marker, what in (("throughput_chart(evolver", "throughput chart"),
                         ("score_vs_time_chart(evolver", "score-vs-time chart")):  # fmt: skip
        page.run_cell(marker)
        drawn = page.marks(marker, what)
        assert "no data yet" not in drawn["title"], drawn
    page.shot(_chart_of("throughput_chart(evolver"), "lab-charts.png")

    # stop: the dashboard shows the final state
    stopped = page.run_cell("evolver.stop()")
    assert re.search(r"stopped: \d+ proposals", stopped["text"]), stopped["text"]
    page.until("(d) => d.state === 'stopped'", "the dashboard to show the stopped run")
