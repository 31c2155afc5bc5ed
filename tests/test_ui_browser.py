"""The Prefect UI in a real headless Chromium: the daily-session deployment's run form offers
every registered model as a tab, a custom run with another model completes, and the run
carries its tags and artifacts; a slowed replay shows its live view and the Cancel button
ends it Cancelled with no ERROR line; an edit saved in the form survives a serve restart.
One shared server and serve. Screenshots go to test-output/ui-browser/."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import ROOT, PrefectServer, Serving, wait_until

import models
from tests.ledger_probe import only_run
from tradeday.config import SessionConfig
from tradeday.ledger import Ledger

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# DESIGN.md: without the background-networking flags Chromium hammers the closed network
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DAY = "2013-09-03"
TIMEOUT_MS = 60_000
SHOTS = ROOT / "test-output" / "ui-browser"


@contextmanager
def browser_page(chromium: Path) -> Iterator[Page]:
    """A headless Chromium page, closed afterwards."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium, installed by ``make chromium`` (what ``make test`` runs) if missing."""
    if not CHROMIUM.exists() and shutil.which("make"):
        subprocess.run(["make", "-C", str(ROOT), "chromium"], timeout=900, check=False)
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} missing and `make chromium` could not install it "
            "(needs root and apt-get with Debian's chromium package)"
        )
    return CHROMIUM


@pytest.fixture
def daily_session(served: PrefectServer, open_fixture, session_paths):
    """The daily-session deployment, its parameters edited (as in the UI's "Edit") to replay
    a recorded day into temp files; the edit is undone afterwards."""
    with served.api() as api:
        dep = api.get("/deployments/name/trading-session/daily-session").json()
        replay = {
            "config": {
                "symbols": ["ES"],
                "feed": {"source": "replay", "recording": str(open_fixture)},
                **session_paths,
            },
            "session_date": DAY,
        }
        assert api.patch(f"/deployments/{dep['id']}", json={"parameters": replay}).is_success
        try:
            yield dep
        finally:
            api.patch(f"/deployments/{dep['id']}", json={"parameters": dep["parameters"]})


def test_custom_run_with_another_model_from_the_ui(
    chromium: Path, served: PrefectServer, daily_session: dict, session_paths
):
    from playwright.sync_api import expect, sync_playwright

    titles = {
        cls.model_config["title"]: cls.model_fields["name"].default
        for cls in models.params_classes()
    }
    default_title = next(iter(titles))
    other_title = list(titles)[1] if len(titles) > 1 else default_title
    chosen = titles[other_title]
    SHOTS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{served.ui_url}/v2/deployments/deployment/{daily_session['id']}/run")
            expect(page.get_by_text("Parameters", exact=True)).to_be_visible()
            expect(page.locator('[data-slot="skeleton"]')).to_have_count(0)

            # the default model's lot size (gt=0) is a number input the form bounds at 1
            quantity = page.get_by_role("spinbutton", name="Quantity (Optional)", exact=True)
            expect(quantity).to_have_attribute("min", "1")
            if len(titles) > 1:  # every registered model is a tab of the model field
                for title in titles:
                    expect(page.get_by_role("tab", name=title, exact=True)).to_have_count(1)
                page.get_by_role("tab", name=other_title, exact=True).click()
                expect(page.get_by_role("tab", name=other_title, exact=True)).to_have_attribute(
                    "aria-selected", "true"
                )
            else:  # one model only: change one of its params instead
                page.get_by_role("spinbutton").first.fill("19")
            page.screenshot(path=str(SHOTS / "1-run-form.png"))
            with page.expect_response(
                lambda r: r.url.endswith("/create_flow_run") and r.request.method == "POST"
            ) as created:
                page.get_by_role("button", name="Submit").click()
            assert created.value.status == 201, created.value.text()
            run = created.value.json()

            with served.api() as api:
                page.goto(f"{served.ui_url}/v2/runs/flow-run/{run['id']}")

                def finished() -> dict | None:
                    current = api.get(f"/flow_runs/{run['id']}").json()
                    return (
                        current
                        if current["state_type"] in ("COMPLETED", "FAILED", "CRASHED")
                        else None
                    )

                run = wait_until(finished, 240, "the custom run to finish", interval=1.0)
                artifacts = api.post(
                    "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
                ).json()
            page.reload()
            expect(page.get_by_text("Completed").first).to_be_visible()
            expect(page.get_by_text(f"{DAY}-{chosen}").first).to_be_visible()
            page.screenshot(path=str(SHOTS / "2-run-completed.png"), full_page=True)
        finally:
            browser.close()
    print(
        f"\nbrowser test: form -> completed run in {time.monotonic() - t0:.1f} s; shots in {SHOTS}"
    )

    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"]["config"]["model"]["name"] == chosen
    assert run["parameters"]["config"]["model"] != SessionConfig().model.model_dump(mode="json")
    assert run["name"] == f"{DAY}-{chosen}"
    assert {f"model:{chosen}", "feed:replay"} <= set(run["tags"])
    by_key = {a["key"]: a for a in artifacts}
    summary = by_key["session-summary"]["data"]
    assert "file://" not in summary  # the UI drops such links: plain text to copy instead
    assert f"-readonly {Path(session_paths['report_path']).resolve()}\n" in summary
    assert by_key["session-progress"]["data"] == 100
    ledger = Ledger(session_paths["ledger_url"])
    try:
        (session,) = ledger.runs(DAY)
        assert (session.model, session.status) == (chosen, "completed")
        assert all(p.qty == 0 for p in ledger.positions(session.run_id))
    finally:
        ledger.close()


def test_the_form_refuses_a_negative_quantity_before_submitting(
    chromium: Path, served: PrefectServer, daily_session: dict
):
    """-5 for the default model's quantity (gt=0): the form's number input is bounded by the
    schema's minimum, so the browser blocks the submit and no run is created; the value
    fixed, the same form creates exactly one run."""
    from playwright.sync_api import expect, sync_playwright

    def submitted(api) -> int:
        """The deployment's runs created by a Submit, not by its cron schedule's scheduler."""
        query = {"deployments": {"id": {"any_": [daily_session["id"]]}}, "limit": 200}
        return sum(
            not r["auto_scheduled"] for r in api.post("/flow_runs/filter", json=query).json()
        )

    with served.api() as api:
        before = submitted(api)
    statuses: list[int] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.on(
                "response",
                lambda r: statuses.append(r.status) if r.url.endswith("/create_flow_run") else None,
            )
            page.goto(f"{served.ui_url}/v2/deployments/deployment/{daily_session['id']}/run")
            expect(page.locator('[data-slot="skeleton"]')).to_have_count(0)
            quantity = page.get_by_role("spinbutton", name="Quantity (Optional)", exact=True)
            quantity.fill("-5")
            assert quantity.evaluate("e => e.validity.rangeUnderflow") is True
            assert "1" in quantity.evaluate("e => e.validationMessage")
            page.get_by_role("button", name="Submit").click()
            page.screenshot(path=str(SHOTS / "3-negative-quantity.png"), full_page=True)
            quantity.fill("5")
            with page.expect_response(lambda r: r.url.endswith("/create_flow_run")) as created:
                page.get_by_role("button", name="Submit").click()
            assert created.value.status == 201, created.value.text()
            run_id = created.value.json()["id"]
        finally:
            browser.close()
    assert statuses == [201]  # the -5 submit never reached the server
    with served.api() as api:
        assert submitted(api) == before + 1

        def finished() -> str | None:  # let it end before other tests use the server
            state = api.get(f"/flow_runs/{run_id}").json()["state_type"]
            return state if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        assert wait_until(finished, 240, "the fixed run to finish", interval=1.0) == "COMPLETED"


def test_live_view_during_a_slowed_replay_then_cancel_from_the_ui(
    chromium: Path, served: PrefectServer, open_fixture, session_paths
):
    """A replay at a quarter of real time (its 57 s of prints last ~4 min): its session-live
    artifact shows positions and feed health while it runs; the run page's Cancel (menu,
    then "Cancel Flow Run") ends it Cancelled, flat, with no log line at ERROR."""
    from playwright.sync_api import expect

    config = {
        "model": {"name": "volume_modulo"},
        "symbols": ["ES"],
        "feed": {"recording": str(open_fixture), "speed": 0.25},
        **session_paths,
    }
    with served.api() as api, browser_page(chromium) as page:
        dep = api.get("/deployments/name/trading-session/replay-day").json()
        created = api.post(
            f"/deployments/{dep['id']}/create_flow_run",
            json={"parameters": {"config": config, "session_date": DAY}},
        )
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]

        def live() -> bool:
            state = api.get(f"/flow_runs/{run_id}").json()["state_type"]
            assert state in ("PENDING", "RUNNING", "SCHEDULED"), state
            found = api.post(
                "/artifacts/filter",
                json={
                    "artifacts": {
                        "flow_run_id": {"any_": [run_id]},
                        "key": {"any_": ["session-live"]},
                    }
                },
            ).json()
            return state == "RUNNING" and bool(found)

        wait_until(live, 240, "the running session's live view", interval=1.0)
        page.goto(f"{served.ui_url}/v2/runs/flow-run/{run_id}")
        page.get_by_role("tab", name="Artifacts").click()
        card = page.get_by_text("session-live", exact=True)
        expect(card).to_be_visible()
        card.click()
        for heading in ("Symbol", "Position", "Unrealized", "Net", "Fills", "Ticks", "Last frame"):
            expect(page.get_by_role("columnheader", name=heading, exact=True)).to_be_visible()
        expect(page.get_by_role("cell", name="ES", exact=True)).to_be_visible()
        expect(page.get_by_role("heading", name=f"{DAY} volume_modulo · running")).to_be_visible()
        page.screenshot(path=str(SHOTS / "4-session-live.png"), full_page=True)
        running = api.get(f"/flow_runs/{run_id}").json()["state_type"]

        page.goto(f"{served.ui_url}/v2/runs/flow-run/{run_id}")
        page.get_by_role("button", name="Open menu").click()
        page.get_by_role("menuitem", name="Cancel").click()
        confirm = page.get_by_role("button", name="Cancel Flow Run")
        expect(confirm).to_be_visible()
        page.screenshot(path=str(SHOTS / "5-cancel-dialog.png"))
        with page.expect_response(
            lambda r: (
                r.url.endswith(f"/flow_runs/{run_id}/set_state") and r.request.method == "POST"
            )
        ) as cancelled:
            confirm.click()
        assert cancelled.value.status in (200, 201), cancelled.value.text()

        def final() -> dict | None:
            run = api.get(f"/flow_runs/{run_id}").json()
            return (
                run
                if run["state_type"] in ("CANCELLED", "COMPLETED", "FAILED", "CRASHED")
                else None
            )

        flow_run = wait_until(final, 120, "the run to end after the UI's cancel", interval=0.5)
        logs = wait_until(
            lambda: (
                (
                    found := api.post(
                        "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}
                    ).json()
                )
                and any(line["message"] == "Flow run was cancelled." for line in found)
                and found
            ),
            60,
            "the flow run's last log line",
        )
        page.reload()
        expect(page.get_by_text("Cancelled").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "6-cancelled.png"), full_page=True)

    assert running == "RUNNING"  # the live view was read while the session streamed
    assert flow_run["state_type"] == "CANCELLED", flow_run["state"]
    assert [line["message"] for line in logs if line["level"] >= 40] == []
    run, fills, positions = only_run(session_paths["ledger_url"])
    assert run.status == "cancelled", (run.status, run.message)
    assert run.counters["ticks"] < 5000  # stopped mid-stream
    assert sum(f.qty if f.side == "buy" else -f.qty for f in fills) == 0
    assert all(p.qty == 0 for p in positions)


def test_an_edit_saved_in_the_ui_survives_a_serve_restart(chromium: Path, serving: Serving):
    """The deployment's Edit form, the default model's quantity set to 9 and saved; after
    ``tradeday serve`` restarts (prefect.yaml unchanged) the server and the form still have 9."""
    from playwright.sync_api import expect

    server = serving.server
    with server.api() as api:
        dep = api.get("/deployments/name/trading-session/daily-session").json()
        edit_url = f"{server.ui_url}/v2/deployments/deployment/{dep['id']}/edit"
        try:
            with browser_page(chromium) as page:
                page.goto(edit_url)
                expect(page.locator('[data-slot="skeleton"]')).to_have_count(0)
                quantity = page.get_by_role("spinbutton", name="Quantity (Optional)", exact=True)
                quantity.fill("9")
                with page.expect_response(
                    lambda r: (
                        r.url.endswith(f"/deployments/{dep['id']}") and r.request.method == "PATCH"
                    )
                ) as saved:
                    page.get_by_role("button", name="Save", exact=True).click()
                assert saved.value.status == 204, saved.value.text()
            edited = api.get(f"/deployments/{dep['id']}").json()["parameters"]
            assert edited["config"]["model"]["quantity"] == 9

            serving.restart()

            after = api.get("/deployments/name/trading-session/daily-session").json()
            assert (after["id"], after["parameters"]) == (dep["id"], edited)
            with browser_page(chromium) as page:
                page.goto(edit_url)
                expect(page.locator('[data-slot="skeleton"]')).to_have_count(0)
                quantity = page.get_by_role("spinbutton", name="Quantity (Optional)", exact=True)
                expect(quantity).to_have_value("9")
                page.screenshot(path=str(SHOTS / "7-edit-after-restart.png"), full_page=True)
        finally:
            api.patch(f"/deployments/{dep['id']}", json={"parameters": dep["parameters"]})
    log = (serving.cwd / "serve.log").read_text()
    assert "daily-session: prefect.yaml unchanged; keeping the server's edits (parameters)" in log
