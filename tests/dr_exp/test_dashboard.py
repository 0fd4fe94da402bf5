"""The dashboard as a user meets it: `dr_exp dashboard` as a real process on loopback, its JSON
API and the guide's endpoints, tokens and actions, paths that try to leave the experiment, the
page in a real browser (chromium through playwright; skipped with the reason where there is
none), new results appearing without a reload, and `dr_exp report` opened with the network off.

Screenshots for the README are rewritten only with DR_EXP_SCREENSHOTS=1.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dr_exp.api import Experiment
from dr_exp.dashboard.data import ExperimentReader
from tests.conftest import REPO, cli_env, run_cli
from tests.dr_exp.dash_helpers import (  # noqa: F401 -- fixtures
    CURVE_TARGET,
    DOCS,
    browser,
    fetch,
    site,
    start_dashboard,
    stop,
    update_screenshots,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def served(site):  # noqa: F811
    proc, url, _ = start_dashboard(site.base)
    try:
        yield url
    finally:
        stop(proc)


def page_of(browser, width: int = 1280, height: int = 900):  # noqa: F811
    """A page that lets the test's own scripts run: playwright's waits evaluate strings, which
    the dashboard's Content-Security-Policy (no eval) would refuse."""
    return browser.new_page(viewport={"width": width, "height": height}, bypass_csp=True)


# -- the JSON API ------------------------------------------------------------------------------
def test_api_serves_table_job_curves_status_and_queries(site, served):  # noqa: F811
    status, names, _ = fetch("GET", f"{served}api/experiments")
    assert status == 200 and [e["name"] for e in names] == ["exp"]
    status, table, headers = fetch("GET", f"{served}api/experiments/exp/jobs")
    assert status == 200
    keys = [c["key"] for c in table["columns"]]
    assert {"lr", "seed"} <= set(keys) and {"val/acc", "val/loss", "epochs"} <= set(keys)
    assert sorted(r[0] for r in table["rows"]) == sorted(site.all_ids)
    assert table["counts"] == {"pending": 0, "running": 0, "completed": 6, "failed": 1, "cancelled": 0, "total": 7}
    status, _, _ = fetch("GET", f"{served}api/experiments/exp/jobs", headers={"If-None-Match": headers["ETag"]})
    assert status == 304  # nothing changed: the poll costs the server a few stats
    status, filtered, _ = fetch("GET", f"{served}api/experiments/exp/jobs?status=failed")
    assert [r[0] for r in filtered["rows"]] == [site.failed_id]

    job_id = site.ids[0]
    status, job, _ = fetch("GET", f"{served}api/experiments/exp/jobs/{job_id}")
    assert status == 200 and job["record"]["status"] == "completed" and job["params"] == {"lr": 0.3, "seed": 0}
    assert [c["path"] for c in job["checkpoints"]] == ["last.ckpt"]
    status, curves, _ = fetch("GET", f"{served}api/experiments/exp/jobs/{job_id}/curves")
    assert curves["epoch"]["val/acc"][0] == [0, 1, 2, 3, 4] and len(curves["step"]["train/loss"][0]) == 5
    status, logged, _ = fetch("GET", f"{served}api/experiments/exp/jobs/{job_id}/log")
    assert "epoch 4: val/acc" in logged["text"]
    status, more, _ = fetch("GET", f"{served}api/experiments/exp/jobs/{job_id}/log?offset={logged['offset']}")
    assert more["text"] == "" and more["offset"] == logged["offset"]
    status, failed, _ = fetch("GET", f"{served}api/experiments/exp/jobs/{site.failed_id}")
    assert "told to fail" in failed["record"]["error"]["message"]

    # The integration guide's endpoints, as its snippet calls them.
    status, st, _ = fetch("GET", f"{served}experiments/exp/status")
    assert status == 200 and (st["completed"], st["failed"], st["pending"], st["total"]) == (6, 1, 0, 7)
    status, q, _ = fetch("POST", f"{served}query", {"experiment": "exp", "metrics": ["val_acc", "train/loss"],
                                                   "group_by": "epoch"})
    assert status == 200 and q["metrics"] == {"val_acc": "val/acc", "train/loss": "train/loss"}
    assert len(q["rows"]) == 7 * 5 and {"job_id", "epoch", "val_acc", "train/loss", "lr", "seed"} <= set(q["rows"][0])
    status, q, _ = fetch("POST", f"{served}query", {"experiment": "exp", "metrics": ["val/acc"], "group_by": "job",
                                                   "sweep": site.sweep_id})
    assert status == 200 and len(q["rows"]) == 6 and all(isinstance(r["val/acc"], float) for r in q["rows"])

    for body, message in [({"experiment": "exp", "metrics": ["val/nope"]}, "no job logged metric 'val/nope'"),
                          ({"experiment": "nope", "metrics": ["val/acc"]}, "no experiment 'nope'"),
                          ({"experiment": "exp", "metrics": ["val/acc"], "sweep": "zzz"}, "no sweep 'zzz'"),
                          ({"experiment": "exp", "metrics": ["val/acc"], "group_by": "hour"}, '"group_by" must be one of'),
                          ({"experiment": "exp"}, '"metrics" must be a non-empty list')]:
        status, err, _ = fetch("POST", f"{served}query", body)
        assert status == 400 and message in err["error"], (body, err)
    assert fetch("GET", f"{served}api/experiments/nope/jobs")[0] == 404
    assert fetch("GET", f"{served}api/experiments/exp/jobs/{'0' * 8}-0000-4000-8000-{'0' * 12}")[0] == 404


def raw_get(url: str, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    """A request whose path goes out exactly as written (no client-side normalisation)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def test_no_path_outside_the_experiment_can_be_read(site, served):  # noqa: F811
    secret = site.root / "secret.txt"
    secret.write_text("TOPSECRET")
    job = site.ids[0]
    paths = [
        "/static/../../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd", "/static/%2e%2e/secret.txt",
        "/static/app.js/../../secret.txt", "/api/experiments/../jobs", "/api/experiments/%2e%2e/jobs",
        "/api/experiments/..%2f..%2fsecret.txt/jobs", "/experiments/..%5c..%5csecret/status",
        f"/api/experiments/exp/jobs/{job}%2f..%2f..%2f..%2fsecret.txt/log", f"/api/experiments/exp/jobs/../{job}/log",
        "/api/experiments/exp/jobs/..%2f..%2f..%2f..%2fsecret.txt", "/api/experiments/exp%00/jobs",
        "/api/experiments/.exp/jobs", "/api/experiments/exp/jobs/" + "a" * 36 + "/log", "/../secret.txt",
        "/secret.txt", "/static/index.html.bak", "/api/experiments/exp/jobs/" + job[:8] + "/log",
    ]
    for path in paths:
        status, body = raw_get(served, path)
        assert status in (400, 404), (path, status, body[:200])
        assert b"TOPSECRET" not in body and b"root:" not in body
    status, body = raw_get(served, "/query", "POST", json.dumps({"experiment": "../runs/exp", "metrics": ["x"]}).encode())
    assert status == 400 and b"invalid experiment name" in body


# -- tokens and actions -----------------------------------------------------------------------
def non_loopback_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def token_of(lines: list[str]) -> str:
    url = next(line.split()[1] for line in lines if line.startswith("dashboard: "))
    return url.split("?token=")[1].split("#")[0]


def test_token_is_required_off_loopback(site):  # noqa: F811
    proc, url, lines = start_dashboard(site.base, "--host", "0.0.0.0")
    try:
        token = token_of(lines)
        assert len(token) >= 24 and "every request needs the token" in "\n".join(lines)
        port = urlsplit(url).port
        addresses = ["127.0.0.1"] + ([a] if (a := non_loopback_address()) else [])
        for addr in addresses:
            base = f"http://{addr}:{port}/"
            for path in ("", "api/experiments", "experiments/exp/status", "static/app.js"):
                status, body, _ = fetch("GET", base + path)
                assert status == 401 and "needs its token" in json.dumps(body), (addr, path)
            assert fetch("GET", f"{base}api/experiments", headers={"Authorization": "Bearer wrong"})[0] == 401
            assert fetch("GET", f"{base}api/experiments", headers={"Authorization": f"Bearer {token}"})[0] == 200
            assert fetch("POST", f"{base}query", {"experiment": "exp", "metrics": ["val/acc"]})[0] == 401
            status, _, headers = fetch("GET", f"{base}?token={token}")
            assert status == 200 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
            cookie = headers["Set-Cookie"].split(";")[0]
            assert fetch("GET", f"{base}api/experiments", headers={"Cookie": cookie})[0] == 200
    finally:
        stop(proc)
    # On loopback, --token (or --require-token, which makes one) makes every request need it too.
    proc, url, lines = start_dashboard(site.base, "--token", "s3cret-token")
    try:
        assert fetch("GET", f"{url}api/experiments")[0] == 401
        assert fetch("GET", f"{url}api/experiments", headers={"X-DrExp-Token": "s3cret-token"})[0] == 200
    finally:
        stop(proc)
    proc, url, lines = start_dashboard(site.base, "--require-token")
    try:
        assert fetch("GET", f"{url}experiments/exp/status")[0] == 401
        assert fetch("GET", f"{url}experiments/exp/status?token={token_of(lines)}")[0] == 200
    finally:
        stop(proc)


def test_actions_need_allow_actions_and_the_token(site, served):  # noqa: F811
    exp = Experiment(site.base, "acts")
    ids = [r.id for r in exp.submit_configs([{"_target_": CURVE_TARGET, "seed": i} for i in range(2)]).submitted]
    status, err, _ = fetch("POST", f"{served}api/experiments/acts/jobs/{ids[0]}/cancel", {},
                          headers={"Authorization": "Bearer anything"})
    assert status == 403 and "read-only" in err["error"]
    proc, url, lines = start_dashboard(site.base, "--allow-actions")
    try:
        token = token_of(lines)
        cancel = f"{url}api/experiments/acts/jobs/{ids[0]}/cancel"
        assert fetch("GET", f"{url}api/experiments")[0] == 200  # reads stay open on loopback
        assert fetch("POST", cancel, {})[0] == 403
        assert fetch("POST", cancel, {}, headers={"Authorization": "Bearer nope"})[0] == 403
        status, _, headers = fetch("GET", f"{url}?token={token}")
        cookie = headers["Set-Cookie"].split(";")[0]
        # A cookie alone is what a cross-site form would carry: not enough without a JSON body.
        status, err, _ = raw_request(url, "POST", f"/api/experiments/acts/jobs/{ids[0]}/cancel", b"a=1",
                                     {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 403
        assert exp.get(ids[0]).status == "pending"
        status, done, _ = fetch("POST", cancel, {}, headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and done["status"] == "cancelled" and exp.get(ids[0]).status == "cancelled"
        status, done, _ = fetch("POST", f"{url}api/experiments/acts/jobs/{ids[0]}/retry", {},
                               headers={"X-DrExp-Token": token})
        assert status == 200 and exp.get(ids[0]).status == "pending"
        prio = f"{url}api/experiments/acts/jobs/{ids[1]}/priority"
        assert fetch("POST", prio, {"priority": 700}, headers={"X-DrExp-Token": token})[0] == 200
        assert exp.get(ids[1]).priority == 700
        assert fetch("POST", prio, {"priority": "high"}, headers={"X-DrExp-Token": token})[0] == 400
        status, err, _ = fetch("POST", prio, {"priority": 5000}, headers={"X-DrExp-Token": token})
        assert status == 409 and "out of range" in err["error"]
    finally:
        stop(proc)


def test_cancel_button_through_the_printed_url(site, browser):  # noqa: F811
    exp = Experiment(site.base, "clicks")
    job_id = exp.submit_configs([{"_target_": CURVE_TARGET, "seed": 7}]).submitted[0].id
    proc, url, lines = start_dashboard(site.base, "--allow-actions")
    try:
        page = page_of(browser)
        page.goto(f"{url}?token={token_of(lines)}#/x/clicks/job/{job_id}")
        page.click("#act-cancel")
        page.wait_for_selector(".jobhead .badge.st-cancelled", timeout=15000)
        assert exp.get(job_id).status == "cancelled"
        assert "token=" not in page.url  # the token does not linger in the address bar or history
        page.close()
    finally:
        stop(proc)


def test_the_browser_meets_the_token_the_action_and_dotdot_refusals(site, browser):  # noqa: F811
    (site.root / "secret.txt").write_text("TOPSECRET")
    exp = Experiment(site.base, "guarded")
    job_id = exp.submit_configs([{"_target_": CURVE_TARGET, "seed": 3}]).submitted[0].id
    proc, url, lines = start_dashboard(site.base, "--host", "0.0.0.0", "--allow-actions")
    try:
        token = token_of(lines)
        base = f"http://{non_loopback_address() or '127.0.0.1'}:{urlsplit(url).port}/"
        page = page_of(browser)
        response = page.goto(base)  # off loopback without the token: not even the page
        assert response.status == 401 and "needs its token" in page.content()
        page.goto(f"{base}?token={token}#/x/guarded/job/{job_id}")
        page.wait_for_selector("#act-cancel")
        post = """async ([path, headers]) => (await fetch(path, {method: 'POST', credentials: 'omit', body: '{}',
                   headers: {'Content-Type': 'application/json', ...headers}})).status"""
        cancel = f"/api/experiments/guarded/jobs/{job_id}/cancel"
        assert page.evaluate(post, [cancel, {}]) == 403  # an action without the token
        assert page.evaluate(post, [cancel, {"Authorization": "Bearer wrong"}]) == 403  # (on the same connection)
        assert exp.get(job_id).status == "pending"
        get = "async path => { const r = await fetch(path); return [r.status, await r.text()]; }"
        for path in ("/static/..%2f..%2f..%2fsecret.txt", "/api/experiments/..%2f..%2fsecret.txt/jobs",
                     f"/api/experiments/guarded/jobs/{job_id}%2f..%2f..%2f..%2fsecret.txt/log", "/static/%2e%2e%2fapp.js"):
            status, body = page.evaluate(get, path)
            assert status in (400, 404) and "TOPSECRET" not in body, (path, status, body[:200])
        page.click("#act-cancel")  # the page's own button carries the token
        page.wait_for_selector(".jobhead .badge.st-cancelled", timeout=15000)
        assert exp.get(job_id).status == "cancelled"
        page.close()
    finally:
        stop(proc)


def raw_request(url: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, dict(resp.getheaders())


# -- the page in a browser --------------------------------------------------------------------
def shown_ids(page) -> set[str]:
    return set(page.eval_on_selector_all(".jobrow", "rows => rows.map(r => r.dataset.id)"))


def test_job_table_filters(site, served, browser):  # noqa: F811
    page = page_of(browser, 1400, 900)
    page.goto(f"{served}#/x/exp")
    page.wait_for_selector(".jobrow")
    assert page.inner_text("#count") == "7 of 7 jobs"
    assert shown_ids(page) == set(site.all_ids)
    page.click(".chip[data-state=failed]")
    page.wait_for_function("document.querySelector('#count').textContent === '1 of 7 jobs'")
    assert shown_ids(page) == {site.failed_id}
    assert "status=failed" in page.url  # the filter is part of the link
    page.click(".chip[data-state=failed]")
    page.fill("#f-tags", "a")
    page.wait_for_function("document.querySelector('#count').textContent === '6 of 7 jobs'")
    assert shown_ids(page) == set(site.ids)
    page.fill("#f-q", "lr=0.03")
    page.wait_for_function("document.querySelector('#count').textContent === '2 of 7 jobs'")
    assert len(shown_ids(page)) == 2
    page.fill("#f-q", "")
    page.fill("#f-tags", "")
    page.click("[data-col='val/acc']")  # sort by a metric: best first
    page.wait_for_selector("[data-col='val/acc'].sorted")
    values = page.eval_on_selector_all(".jobrow [data-col='val/acc']", "cells => cells.map(c => parseFloat(c.textContent))")
    assert values == sorted(values, reverse=True)
    if update_screenshots():
        page.screenshot(path=str(DOCS / "dashboard.png"))
    page.close()


def test_job_page_draws_every_curve(site, served, browser):  # noqa: F811
    page = page_of(browser, 1400, 1000)
    page.goto(f"{served}#/x/exp/job/{site.ids[2]}")
    path = page.wait_for_selector(".chart[data-metric='val/acc'] path.series")
    assert path.get_attribute("data-n") == "5"
    assert path.get_attribute("d").count(",") == 5  # five x,y points joined
    drawn = page.eval_on_selector_all("#curves .chart", "charts => charts.map(c => c.dataset.metric)")
    assert sorted(drawn) == ["train/loss", "val/acc", "val/loss"]
    page.wait_for_function("document.querySelector('#log').textContent.includes('epoch 4: val/acc')")
    assert "last.ckpt" in page.inner_text("main")
    assert page.inner_text(".jobhead .badge") == "completed"
    if update_screenshots():
        page.screenshot(path=str(DOCS / "dashboard-job.png"), full_page=True)
    page.goto(f"{served}#/x/exp/job/{site.failed_id}")
    page.wait_for_selector(".errorbox")
    assert "told to fail" in page.inner_text(".errorbox")
    page.close()


def test_sweep_and_compare_pages(site, served, browser):  # noqa: F811
    page = page_of(browser, 1400, 1000)
    page.goto(f"{served}#/x/exp/sweep/{site.sweep_id}")
    page.wait_for_selector("#sweep-params .chart[data-param=lr] circle.point")
    assert page.eval_on_selector_all("#sweep-params .chart", "c => c.map(x => x.dataset.param)") == ["lr", "seed"]
    assert len(page.query_selector_all("#sweep-params .chart[data-param=lr] circle.point")) == 6
    assert len(page.query_selector_all("#best-jobs tr")) == 7  # header + 6 jobs
    if update_screenshots():
        page.screenshot(path=str(DOCS / "dashboard-sweep.png"), full_page=True)
    a, b = site.ids[0], site.ids[4]
    page.goto(f"{served}#/x/exp/compare/{a},{b}")
    page.wait_for_selector("#compare-curves .chart[data-metric='val/acc'] path.series")
    assert len(page.query_selector_all("#compare-curves .chart[data-metric='val/acc'] path.series")) == 2
    diff = page.inner_text("#config-diff")
    assert "lr" in diff and "0.3" in diff and "0.03" in diff and "epochs" not in diff  # only what differs
    page.close()


def test_study_page_api_and_links(site, served, browser, tmp_path):  # noqa: F811
    """An adaptive sweep's study through the dashboard: the same JSON as `study show --format
    json`, a page with the best trial, every trial, the history chart and the importances, and
    links to it from the sweep page and from each trial's job page; the same in the offline report."""
    swept = run_cli("job", "sweep", "--config", "exp_configs/synthetic.yaml", "--search",
                    "lr=tag(log,interval(1e-4,1e-1)) weight_decay=interval(0,1e-3)", "--trials", "6", "--parallel", "2",
                    "--metric", "val/acc", "--mode", "max", "--seed", "3", "--overrides", "epochs=3",
                    base=site.base, experiment="searched")
    assert swept.returncode == 0, swept.stderr
    assert run_cli("system", "worker", "--idle-timeout", "0", base=site.base, experiment="searched").returncode == 0
    [name] = [s["name"] for s in json.loads(run_cli("study", "list", "--format", "json", base=site.base,
                                                    experiment="searched").stdout)]
    shown = json.loads(run_cli("study", "show", name, "--format", "json", base=site.base, experiment="searched").stdout)
    status, body, _ = fetch("GET", f"{served}api/experiments/searched/studies/{name}")
    assert status == 200 and {**body, "experiment": None} == {**shown, "experiment": None}
    assert body["counts"]["complete"] == 6 and body["importances"] and body["best"]["job_id"]
    status, err, _ = fetch("GET", f"{served}api/experiments/searched/studies/nope")
    assert status == 404 and "no study 'nope'" in err["error"]

    page = page_of(browser, 1400, 1000)
    page.goto(f"{served}#/x/searched/study/{name}")
    page.wait_for_selector("#study-trials .trialrow")
    assert len(page.query_selector_all("#study-trials .trialrow[data-state=complete]")) == 6
    best = body["best"]
    shown_best = page.inner_text("#study-best")
    assert f"best: trial {best['number']}" in shown_best and best["job_id"][:8] in shown_best
    assert page.query_selector("#study-history path.series") is not None
    assert sorted(page.eval_on_selector_all(".importance", "rows => rows.map(r => r.dataset.param)")) == ["lr", "weight_decay"]
    sweep_id = body["settings"]["sweep_id"]
    page.goto(f"{served}#/x/searched/sweep/{sweep_id}")
    page.click(f"text=study {name}")
    page.wait_for_selector("#study-trials .trialrow")
    page.goto(f"{served}#/x/searched/job/{best['job_id']}")
    page.click(f"text=trial {best['number']} of study {name}")
    page.wait_for_selector("#study-trials .trialrow")
    page.close()

    # The offline report carries the study page too, reached from a trial's job page.
    out = tmp_path / "report.html"
    assert run_cli("report", "--out", str(out), base=site.base, experiment="searched").returncode == 0
    context = browser.new_context(offline=True)
    page = context.new_page()
    page.goto(f"{out.as_uri()}#/x/searched/job/{best['job_id']}")
    page.click(f"text=trial {best['number']} of study {name}")
    page.wait_for_selector("#study-trials .trialrow")
    assert len(page.query_selector_all("#study-trials .trialrow[data-state=complete]")) == 6
    assert f"best: trial {best['number']}" in page.inner_text("#study-best")
    assert page.query_selector("#study-history path.series") is not None
    context.close()


def test_new_results_appear_without_reload(site, served, browser):  # noqa: F811
    exp = Experiment(site.base, "live")
    first = exp.submit_configs([{"_target_": CURVE_TARGET, "lr": 0.2, "epochs": 1}]).submitted[0].id
    table = page_of(browser)
    table.goto(f"{served}#/x/live")
    table.wait_for_selector(f".jobrow[data-id='{first}'] .badge.st-pending")
    table.evaluate("window.__sameDocument = true")
    new = exp.submit_configs([{"_target_": CURVE_TARGET, "lr": 0.2, "epochs": 4, "sleep": 0.4}]).submitted[0].id
    job = page_of(browser)
    job.goto(f"{served}#/x/live/job/{new}")
    job.wait_for_selector(".jobhead .badge.st-pending")
    job.evaluate("window.__sameDocument = true")
    worker = subprocess.Popen([sys.executable, "-m", "dr_exp", "system", "worker", "--idle-timeout", "1"],
                              env=cli_env(site.base, "live"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        table.wait_for_selector(f".jobrow[data-id='{new}'] .badge.st-completed", timeout=60000)
        table.wait_for_selector(f".jobrow[data-id='{first}'] .badge.st-completed", timeout=10000)
        assert table.evaluate("window.__sameDocument") is True  # updated in place, not reloaded
        assert table.inner_text("#count") == "2 of 2 jobs"
        job.wait_for_selector(".jobhead .badge.st-completed", timeout=15000)
        job.wait_for_function("document.querySelector(\".chart[data-metric='val/acc'] path.series\")?.dataset.n === '4'",
                              timeout=15000)
        job.wait_for_function("document.querySelector('#log').textContent.includes('epoch 3: val/acc')", timeout=15000)
        assert job.evaluate("window.__sameDocument") is True
    finally:
        worker.wait(60)
    table.close()
    job.close()


def test_report_opens_offline_with_the_same_rows_and_curves(site, browser, tmp_path):  # noqa: F811
    out = tmp_path / "report.html"
    proc = run_cli("report", "--out", str(out), base=site.base)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}: 7 jobs")
    html = out.read_text()
    assert "<script src=" not in html and "<link " not in html and 'src="http' not in html
    context = browser.new_context(offline=True)
    requests: list[str] = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                  else (requests.append(route.request.url), route.abort()))
    page = context.new_page()
    page.goto(out.as_uri())
    page.wait_for_selector(".jobrow")
    assert shown_ids(page) == set(site.all_ids)
    assert "report" in page.inner_text("#live")
    page.click(".chip[data-state=failed]")
    page.wait_for_function("document.querySelector('#count').textContent === '1 of 7 jobs'")
    page.goto(f"{out.as_uri()}#/x/exp/job/{site.ids[2]}")
    path = page.wait_for_selector(".chart[data-metric='val/acc'] path.series")
    assert path.get_attribute("data-n") == "5"
    assert "epoch 4: val/acc" in page.inner_text("#log")
    page.goto(f"{out.as_uri()}#/x/exp/sweep/{site.sweep_id}")
    page.wait_for_selector("#sweep-params .chart[data-param=seed] circle.point")
    assert requests == []
    context.close()


# -- bad input and the read layer -------------------------------------------------------------
def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ")
    return proc.stderr


def test_dashboard_and_report_bad_input(site, tmp_path):  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert "is in use" in one_error_line(run_cli("dashboard", "--port", str(port), base=site.base, timeout=30))
    assert "does not exist" in one_error_line(run_cli("dashboard", base=tmp_path / "nowhere", timeout=30))
    assert "--token must be" in one_error_line(run_cli("dashboard", "--token", "a b;c", base=site.base, timeout=30))
    assert "cannot listen on" in one_error_line(run_cli("dashboard", "--host", "192.0.2.1", "--port", "0",
                                                        base=site.base, timeout=30))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args, message in [(["--sweep", "nope"], "no sweep 'nope'"),
                          (["--out", str(tmp_path / "missing" / "r.html")], "does not exist"),
                          (["--out", str(blocker / "r.html")], "does not exist"),
                          (["--out", str(tmp_path / "r.txt")], "ending in .html"),
                          (["--status", "done"], "unknown status done")]:
        assert message in one_error_line(run_cli("report", *args, base=site.base)), args
    assert "no experiment 'ghost'" in one_error_line(run_cli("report", base=site.base, experiment="ghost"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_reader_skips_a_torn_line_and_never_moves_files(tmp_path):
    exp = Experiment(tmp_path, "exp")
    rec = exp.submit_configs([{"_target_": CURVE_TARGET}]).submitted[0]
    run = exp.run_dir(rec)
    run.root.mkdir(parents=True)
    run.metrics.write_text('{"epoch": 0, "phase": "epoch", "val/acc": 0.5}\n{"epoch": 1, "phase": "ep')
    reader = ExperimentReader(tmp_path, "exp")
    assert [r["epoch"] for r in reader.metrics(rec).rows] == [0]
    assert reader.latest(rec) == {"val/acc": 0.5, "epoch": 0}
    with open(run.metrics, "a") as fh:
        fh.write('och", "val/acc": 0.7}\n')
    assert [r["val/acc"] for r in reader.metrics(rec).rows] == [0.5, 0.7]  # read on from where it stopped
    assert reader.latest(rec) == {"val/acc": 0.7, "epoch": 1}
    bad = tmp_path / "exp" / "jobs" / ("0" * 8 + "-0000-4000-8000-" + "0" * 12 + ".json")
    bad.write_text("{not json")
    scan = reader.scan()
    assert [r.id for r in scan.records] == [rec.id] and "unreadable record" in scan.problems[0]
    assert bad.exists()  # a viewer reports it; `dr_exp validate` is what moves it aside


def test_readme_screenshots_exist():
    for name in ("dashboard.png", "dashboard-job.png", "dashboard-sweep.png", "plot.png"):
        assert (DOCS / name).is_file(), f"docs/{name} missing: run the tests with DR_EXP_SCREENSHOTS=1"
    assert Path(REPO / "README.md").read_text().count("docs/dashboard") >= 2
