"""The HTML report (report.py, explain_clinicalLF.py --report), checked in a real browser: a tiny model trained
and explained end to end with the report on, then index.html and every stay page loaded in headless Chromium
(Debian's `chromium`), driven through the DevTools protocol over a pipe (--remote-debugging-pipe: no extra
package). No console error, no network request, one mark per real event, the risk over time equal to predict.py's
scoring of the truncated stays, the top-10 lists equal to the attribution table; a screenshot of each page is
saved in the test's temporary folder.

Without Chromium the browser tests skip with a message, except under CI (CI=true), where they fail: .ci/run
installs it.
"""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import event_table
import explain_clinicalLF as ex
import predict
import report
import train
from train_tables import RISKY, make_event_table

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path():
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


@pytest.fixture(scope="module")
def chromium():
    path = chromium_path()
    if path is None:
        message = ("headless Chromium not found (install Debian's package: apt-get install -y chromium); "
                   "the report's browser tests need it")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " and CI is set: .ci/run installs it")
        pytest.skip(message)
    return path


class Browser:
    """Headless Chromium driven through the DevTools protocol on a pipe (fds 3 and 4, NUL-separated JSON)."""

    def __init__(self, executable, width=1280, height=900):
        to_child_r, self._write = os.pipe()
        self._read, from_child_w = os.pipe()
        # above fd 9, so that moving them to 3 and 4 below cannot overwrite one with the other
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
        os.close(to_child_r)
        os.close(from_child_w)
        to_child_r, from_child_w = high
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        # the protocol's pipes must be the browser's fds 3 (commands) and 4 (answers): bash moves them there
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w}', executable, "--headless",
             "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.buffer, self.next_id, self.events = b"", 0, []
        self.width, self.height = width, height

    def call(self, method, params=None, session=None, timeout=60):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def _receive(self, deadline):
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, method, session, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._receive(deadline))

    def open(self, url):
        """A new tab with console, log and network events on, loaded at url; returns (session, what it logged)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.events.clear()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                          "deviceScaleFactor": 1, "mobile": False}, session)
        self.call("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired", session)
        self.evaluate(session, "new Promise(r => requestAnimationFrame(() => r(1)))")
        return session, target

    def evaluate(self, session, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self, session, page_url):
        """Console errors, uncaught exceptions, error log entries and every request but the page itself."""
        found = []
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.requestWillBeSent" and params["request"]["url"] != page_url:
                found.append(f"request: {params['request']['url']}")
        return found

    def screenshot(self, session, path, full_page=True):
        if full_page:
            size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": int(size["height"]),
                                                              "deviceScaleFactor": 1, "mobile": False}, session)
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return path

    def close_tab(self, target):
        self.call("Target.closeTarget", {"targetId": target})

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._read)
        os.close(self._write)
        shutil.rmtree(self.profile, ignore_errors=True)


# -----------------------------------------------------------------------------
# A tiny model trained and explained end to end, with the report on

@pytest.fixture(scope="module")
def reported(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("report_e2e")
    table = make_event_table(n_patients=24, seed=5, max_events=14)
    table["planted_risk"] = table["event_text"].isin(RISKY).astype(int)
    data = root / "events.csv"
    table.to_csv(data, index=False)
    out = root / "run"
    train.main(["--data", str(data), "--output-dir", str(out), "--epochs", "1", "--text-encoder", str(tiny_bert_dir),
                "--cache-dir", str(root / "cache"), "--d-model", "32", "--n-layers", "1", "--n-heads", "4",
                "--d-ff", "64", "--pool-heads", "2", "--bootstrap", "0", "--max-events", "10", "--device", "cpu",
                "--baselines", "none"])
    table = event_table.read_event_table(data)
    counts = table.groupby("stay_id")["event_type"].count()
    empty_stay, long_stay = int(counts.index[counts == 0][0]), int(counts.idxmax())
    checkpoint = out / "checkpoints" / "best_model.pth"
    save_dir = root / "explain"
    result = ex.run_explainability_analysis(
        checkpoint, data, save_dir, split="test", max_stays=3, stay_ids=[empty_stay, long_stay], batch_size=4,
        n_steps=8, randomisation_stays=0, cache_dir=root / "cache", make_figures=False, show_progress=False,
        report=True)
    return dict(root=root, data=data, checkpoint=checkpoint, cache=root / "cache", table=table, result=result,
                save_dir=save_dir, empty_stay=empty_stay, long_stay=long_stay)


def test_report_option_is_on_by_default_for_few_stays_and_documented():
    parser = ex.build_arg_parser()
    assert parser.parse_args([]).report is None  # auto: on up to REPORT_MAX_STAYS stays (the default run's 100)
    assert parser.parse_args(["--report"]).report is True and parser.parse_args(["--no-report"]).report is False
    assert ex.ExplainRun().max_stays <= ex.REPORT_MAX_STAYS
    from interfaces_doc import undocumented
    assert undocumented(["report/index.html", "report/stay_{stay_id}.html", "index.html"]) == []


def test_report_pages_for_every_explained_stay(reported):
    report_dir = reported["save_dir"] / "report"
    stays = set(reported["result"]["predictions"]["stay_id"])
    assert reported["result"]["paths"]["report/index.html"] == report_dir / "index.html"
    assert {p.name for p in report_dir.glob("stay_*.html")} == {f"stay_{s}.html" for s in stays}
    assert not list(report_dir.glob(".tmp-*"))
    for page in report_dir.glob("*.html"):
        text = page.read_text()
        for remote in ("http://", "https://", "//cdn", "@import", "<link rel=\"stylesheet\"", "<script src"):
            assert remote not in text, (page.name, remote)


def truncated_by_hand(table, stay_id, k):
    """The stay's rows known k hours before its prediction time, times counted from then (one event-less row when
    none is known): what predict.py is given to score the stay at that hour."""
    stay = table[table.stay_id == stay_id]
    events = stay[stay.event_type.notna() & (stay.relative_time_to_final_event >= 60 * k)].copy()
    if events.empty:
        events = stay.iloc[:1].copy()
        for column in ("event_time", "event_type", "event_text", "relative_time_to_final_event"):
            events[column] = None
    events["relative_time_to_final_event"] = events["relative_time_to_final_event"] - 60 * k
    return events


def test_every_page_in_a_browser(reported, chromium, tmp_path):
    """Index and every stay page in headless Chromium: no console error or network request, one mark per real
    event, the risk over time equal to predict.py's scoring of the truncated stays, the top-10 lists equal to the
    attribution table, keyboard focus showing the tooltip; a screenshot of each page under tmp_path."""
    report_dir = reported["save_dir"] / "report"
    rows = pd.read_csv(reported["save_dir"] / "event_attributions.csv")
    ig = rows[rows.method == "integrated_gradients"]
    stays = sorted(reported["result"]["predictions"]["stay_id"])
    browser = Browser(chromium, width=1400)
    try:
        url = (report_dir / "index.html").as_uri()
        session, target = browser.open(url)
        assert browser.problems(session, url) == []
        links = browser.evaluate(session, "[...document.querySelectorAll('#stays a')].map(a => a.getAttribute('href'))")
        assert sorted(links) == sorted(f"stay_{s}.html" for s in stays)
        risks = browser.evaluate(session, "document.querySelector('button[data-col=\"3\"]').click(); "
                                 "[...document.querySelectorAll('#stays tbody tr')].map(r => +r.cells[3].dataset.sort)")
        assert risks == sorted(risks) and len(risks) == len(stays)  # sorted by risk on a click
        browser.screenshot(session, tmp_path / "index.png")
        browser.close_tab(target)

        hand_made, expected_keys = [], []
        pages = {}
        for stay_id in stays:
            url = (report_dir / f"stay_{stay_id}.html").as_uri()
            session, target = browser.open(url)
            assert browser.problems(session, url) == [], stay_id
            page = browser.evaluate(session, """({
                marks: [...document.querySelectorAll('.ev')].map(m => +m.dataset.i),
                risk: [...document.querySelectorAll('.risk-pt')].map(p => [+p.dataset.hours, +p.dataset.risk]),
                headline: +document.getElementById('risk').dataset.risk,
                up: [...document.querySelectorAll('table[data-direction=up] tbody tr')].map(r => +r.dataset.eventIndex),
                down: [...document.querySelectorAll('table[data-direction=down] tbody tr')].map(r => +r.dataset.eventIndex),
                trust: document.getElementById('trust').innerText})""")
            mine = ig[ig.stay_id == stay_id]
            assert sorted(page["marks"]) == sorted(mine.event_index), stay_id  # one mark per real event
            up = mine[mine.attribution > 0].sort_values("attribution", ascending=False, kind="stable")
            down = mine[mine.attribution < 0].sort_values("attribution", kind="stable")
            assert page["up"] == up.event_index.head(report.TOP_EVENTS).tolist(), stay_id
            assert page["down"] == down.event_index.head(report.TOP_EVENTS).tolist(), stay_id
            assert "not causes" in page["trust"]
            if page["marks"]:  # keyboard: the timeline takes focus, arrows move, the tooltip follows
                tip = browser.evaluate(session, """(() => {
                    const first = document.querySelector('.ev[tabindex="0"]'); first.focus();
                    first.dispatchEvent(new KeyboardEvent('keydown', {key: 'End', bubbles: true}));
                    const tip = document.getElementById('tip');
                    return [+document.activeElement.dataset.i, tip.hidden, tip.innerText]; })()""")
                assert tip[0] == max(page["marks"]) and tip[1] is False
                last = mine[mine.event_index == tip[0]].iloc[0]
                assert str(rows[(rows.stay_id == stay_id) & (rows.event_index == tip[0])].event_text.iloc[0]) in tip[2]
                assert f"{last.attribution:+.3f}" in tip[2]
            browser.evaluate(session, "document.activeElement.blur(); 1")  # the screenshot without the tooltip
            browser.screenshot(session, tmp_path / f"stay_{stay_id}.png")
            if stay_id == reported["long_stay"]:
                pdf = browser.call("Page.printToPDF", {"landscape": True, "printBackground": True}, session)
                (tmp_path / f"stay_{stay_id}.pdf").write_bytes(base64.b64decode(pdf["data"]))
            browser.close_tab(target)
            pages[stay_id] = page
            for hours, _ in page["risk"]:
                # a fresh stay (and patient: predict.py splits by patient) per hour; neither is a model input
                hand_made.append(truncated_by_hand(reported["table"], stay_id, hours).assign(
                    stay_id=len(expected_keys), subject_id=len(expected_keys)))
                expected_keys.append((stay_id, hours))
    finally:
        browser.close()
    assert (tmp_path / "index.png").stat().st_size > 0 and len(list(tmp_path.glob("stay_*.png"))) == len(stays)
    # predict.py on the truncated stays, one fresh stay id per (stay, hour)
    truncated = tmp_path / "truncated.csv"
    pd.concat(hand_made, ignore_index=True).to_csv(truncated, index=False)
    scored, _, _ = predict.predict_table(reported["checkpoint"], truncated, cache_dir=reported["cache"], progress=False)
    expected = dict(zip(expected_keys, scored.sort_values("stay_id")["probability"]))
    predictions = reported["result"]["predictions"].set_index("stay_id")
    calibration = train.load_checkpoint(reported["checkpoint"])["calibration"]
    import evaluation
    for stay_id, page in pages.items():
        got = [risk for _, risk in page["risk"]]
        want = [expected[(stay_id, hours)] for hours, _ in page["risk"]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(stay_id))
        headline = evaluation.apply_calibration(calibration, [predictions.at[stay_id, "logit"]])[0]
        assert page["headline"] == pytest.approx(headline, abs=1e-9)
        if page["risk"]:  # the last point (the prediction time) is the headline risk
            assert page["risk"][[h for h, _ in page["risk"]].index(0)][1] == pytest.approx(headline, abs=1e-5)
    assert len(pages[reported["long_stay"]]["risk"]) >= 2 and pages[reported["empty_stay"]]["marks"] == []


# -----------------------------------------------------------------------------
# A long stay, and measures that were not computed

def long_stay_context(n, seed=0):
    """report.stay_context of a made-up stay of n events over 48 h (no model needed)."""
    rng = np.random.default_rng(seed)
    kinds = np.array(["lab", "prescription", "procedure", "microbiology", "input", "vital", "output"])
    minutes = np.sort(rng.uniform(0, 48 * 60, n))[::-1]
    ig = rng.normal(0, 0.05, n) * rng.choice([1, 10], n, p=[0.95, 0.05])
    events = pd.DataFrame({
        "stay_id": 1, "event_index": np.arange(n),
        "event_time": pd.Timestamp("2150-01-03 12:00") - pd.to_timedelta(minutes, unit="min"),
        "event_type": rng.choice(kinds, n, p=[.5, .15, .1, .05, .1, .05, .05]),
        "event_text": [f"Lab: Analyte {rng.integers(0, 60)} {rng.uniform(0, 200):.1f} mg/dL (ref 1.0-9.0) abnormal"
                       for _ in range(n)],
        "relative_time_to_final_event": minutes, "integrated_gradients": ig, "layer_integrated_gradients": ig,
        "feature_ablation": 0.8 * ig, "attention_pooling": rng.dirichlet(np.ones(n))})
    static = pd.DataFrame({"integrated_gradients": rng.normal(0, .1, 8), "feature_ablation": rng.normal(0, .1, 8)},
                          index=list(report.STATIC_LABELS))
    risk = pd.DataFrame({"hours_before": np.arange(49), "risk": rng.uniform(0.05, 0.4, 49),
                         "n_events": [int((minutes >= 60 * k).sum()) for k in range(49)]})
    info = dict(stay_id=1, subject_id=2, hadm_id=3, first_careunit="MICU", gender="F", patient_age=70.0, risk=0.3,
                mortality=1, n_events_in_table=n, prediction_time=pd.Timestamp("2150-01-03 12:00"))
    model = dict(checkpoint="best_model.pth", encoder="encoder", encoder_pooling="cls", trained="2026-01-01 00:00",
                 epoch=1, calibration="platt", max_events=n)
    run = dict(data="events.csv", split="test", n_stays=1, written="2026-01-01 00:00")
    return report.stay_context(info, events, static, risk, None, 0.2, (0.15, "15 of 100 training stays died"),
                               0.05, model, run)


def test_measures_not_computed_for_a_stay_are_said_so():
    context = long_stay_context(30)
    assert context["flag"] == "not assessed" or all(c["ok"] is not False for c in context["checks"])
    values = {c["name"]: c["value"] for c in context["checks"]}
    assert values["IG adds up"] == values["Deletion vs random"] == "not computed for this stay"
    events = pd.DataFrame({"integrated_gradients": [0.1, -0.2, 0.3], "feature_ablation": [np.nan] * 3})
    checks, flag, curves = report.trust(events, {"ig_relative_delta": 0.01}, 0.05)
    assert [c["value"] for c in checks][1:] == ["not computed for this stay"] * 2
    assert flag == "no disagreement found" and curves is None
    html = report.render("report_stay.html", context)
    assert html.count("not computed for this stay") >= 2


def test_a_long_stay_page_is_small_and_fast(chromium, tmp_path):
    for n in (768, 1000):
        html = report.render("report_stay.html", long_stay_context(n))
        page = tmp_path / f"stay_{n}.html"
        page.write_text(html)
        if n == 768:
            assert len(html.encode()) < 2_000_000
    browser = Browser(chromium, width=1400)
    try:
        url = page.as_uri()  # the 1,000-event page
        session, target = browser.open(url)
        assert browser.problems(session, url) == []
        assert browser.evaluate(session, "document.querySelectorAll('.ev').length") == 1000
        load_ms = browser.evaluate(session, "performance.getEntriesByType('navigation')[0].loadEventEnd")
        assert load_ms < 5000, load_ms
        browser.screenshot(session, tmp_path / "stay_1000.png")
    finally:
        browser.close()
