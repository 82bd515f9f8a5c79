"""What a person sees in the Dagster UI, in a real browser (Debian's chromium, driven by
Playwright) against a real `dagster dev` on the reference code location: the asset page shows
site, residency, replicas and URI; the catalog filters by the site tag; a run's page shows the
placement table and the run summary; a rollback shows on promoted_model's page.

One `dagster dev` and one browser per module; the data is made once, before any page is
opened: a landing day, two promoted checkpoints, then daily_features_job (GraphQL
`launchRun`, as the launchpad does) and rollback_job run side by side.
"""

from __future__ import annotations

import re
import types
import urllib.parse

import os

import numpy as np
import pytest

try:
    from playwright.sync_api import Page, expect
except ImportError:  # locally without the test extra: skipped; under CI, a broken install
    if os.environ.get("CI"):
        raise
    pytest.skip("playwright is not installed: pip install -e '.[test]'", allow_module_level=True)

from dagster_gravity import Topology
from dagster_gravity.checkpoints import CheckpointStore
from pipelines.training import MODEL_NAME
from resources import CHECKPOINT_SITE
from tests.support.dagster_dev import dagster_dev_server, project_env, wait_for_run, write_landing_day

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.webserver]

DAY = "2026-01-01"
WAIT_MS = 30_000  # a page's data arrives over GraphQL from a busy 2-core machine
OBSERVATIONS = """
query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  ... on ObservationEvent { assetKey { path } metadataEntries { label
    ... on TextMetadataEntry { text } ... on JsonMetadataEntry { jsonString } } } } } } }
"""
LATEST_URI = """
query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset {
  assetMaterializations(limit: 1) { metadataEntries { label ... on TextMetadataEntry { text } } } } } }
"""


@pytest.fixture(scope="module")
def ui(tmp_path_factory, chromium):
    root = tmp_path_factory.mktemp("browser")
    work, env = project_env(root)
    write_landing_day(work, env, DAY)
    store = CheckpointStore.for_site(Topology.from_yaml(work / "sites.yaml"), CHECKPOINT_SITE)
    with dagster_dev_server(work, env, root / "dev.log") as (client, port):
        features = client.submit_job_execution("daily_features_job", tags={"dagster/partition": DAY})
        assert wait_for_run(client, features, timeout=180) == "SUCCESS", (root / "dev.log").read_text()[-3000:]
        # The day's candidate (v1); rollback_job loads it as promoted_model's input. Its gate
        # decides on this small day's holdout, so v1 is promoted here if the gate kept it.
        retrain = client.submit_job_execution("retrain_job", tags={"dagster/partition": DAY})
        wait_for_run(client, retrain, timeout=180)
        assert store.versions(MODEL_NAME) == [1], (root / "dev.log").read_text()[-3000:]
        if store.promoted(MODEL_NAME) != 1:
            store.promote(MODEL_NAME, 1, reason="browser test: the day's candidate")
        # A second promotion, so rollback_job has an earlier version (v1) to go back to from v2.
        version = store.save(MODEL_NAME, {"coef": np.full((1, 3), 2.0)}, lineage={"seed": 2})
        store.promote(MODEL_NAME, version.version, reason="browser test seed 2")
        rollback = client.submit_job_execution(
            "rollback_job", tags={"dagster/partition": DAY},
            run_config={"ops": {"promoted_model": {"config": {"reason": "browser test"}}}})
        assert wait_for_run(client, rollback, timeout=180) == "SUCCESS", (root / "dev.log").read_text()[-3000:]
        assert store.promoted(MODEL_NAME) == 1
        yield types.SimpleNamespace(
            url=f"http://127.0.0.1:{port}", client=client, features_run=features, rollback_run=rollback)


@pytest.fixture
def page(chromium, ui):
    context = chromium.new_context(viewport={"width": 1600, "height": 1200})
    # The UI's first-visit "join the community" dialog covers the page; it stays dismissed
    # once this key is set.
    context.add_init_script("window.localStorage.setItem('communityNux', '1')")
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def metadata_row(page: Page, key: str):
    """The table row whose first cell is exactly `key` (the asset page's metadata tables)."""
    return page.locator("tr").filter(has=page.locator("td").filter(has_text=re.compile(rf"^\s*{re.escape(key)}\s*$")))


def test_asset_page_shows_site_residency_and_uri(ui, page):
    page.goto(f"{ui.url}/assets/raw_eu_customers")
    expect(metadata_row(page, "gravity/site").first).to_contain_text("eu-colo", timeout=WAIT_MS)
    expect(metadata_row(page, "gravity/residency").first).to_contain_text("eu")

    # The materialization's dagster/uri, as the run recorded it, is what the Events tab shows
    # (EU data is never copied out, so its latest event is that materialization).
    entries = ui.client._execute(LATEST_URI, {"path": ["raw_eu_customers"]})["assetOrError"]["assetMaterializations"][0]
    uri = next(e["text"] for e in entries["metadataEntries"] if e["label"] == "dagster/uri")
    assert "/eu-colo/raw_eu_customers/" in uri, uri
    page.goto(f"{ui.url}/assets/raw_eu_customers?view=events")
    expect(metadata_row(page, "dagster/uri").first).to_contain_text(uri, timeout=WAIT_MS)
    expect(metadata_row(page, "gravity/site").first).to_contain_text("eu-colo")


def catalog(page: Page, ui, selection: str) -> None:
    page.goto(f"{ui.url}/assets?asset-selection={urllib.parse.quote(selection)}")
    # The catalog has answered when the selection shows either assets or "No matching assets".
    expect(page.get_by_text("Asset name").or_(page.get_by_text("No matching assets"))).to_be_visible(timeout=WAIT_MS)


def asset_link(page: Page, name: str):
    """The catalog row's link to the asset's page."""
    return page.locator(f'a[href="/assets/{name}"]')


def test_catalog_filters_assets_by_site_and_residency_tags(ui, page):
    catalog(page, ui, 'tag:"gravity/site"="aws-us-east-1"')
    expect(asset_link(page, "raw_items").first).to_be_visible(timeout=WAIT_MS)
    expect(asset_link(page, "raw_events")).to_have_count(0)
    expect(asset_link(page, "raw_eu_customers")).to_have_count(0)

    catalog(page, ui, 'tag:"gravity/residency"="eu"')
    for name in ("raw_eu_customers", "eu_customer_features"):
        expect(asset_link(page, name).first).to_be_visible(timeout=WAIT_MS)
    # the k-anonymous aggregates declare no residency: they may leave the EU
    expect(asset_link(page, "eu_segment_features")).to_have_count(0)


def test_asset_page_shows_replicas(ui, page):
    # Which input the features run copied, and to which site: the IO manager's observation.
    events = ui.client._execute(OBSERVATIONS, {"id": ui.features_run})["logsForRun"]["events"]
    copies = [
        (e["assetKey"]["path"][-1], {m["label"]: m.get("text") for m in e["metadataEntries"]}["gravity/replicated_to"])
        for e in events
        if e.get("metadataEntries") and any(m["label"] == "gravity/replicated_to" for m in e["metadataEntries"])
    ]
    assert copies, "daily_features_job replicated nothing: the replicas test has nothing to show"
    asset, replica_site = copies[0]
    # Dagster's overview shows only the materialization's own list (the sites when it was
    # written); the current replicas are on the copy's observation, the asset's newest event,
    # which is what its Events tab opens on (README, "Location on assets").
    page.goto(f"{ui.url}/assets/{asset}?view=events")
    expect(metadata_row(page, "gravity/replicated_to").first).to_contain_text(replica_site, timeout=WAIT_MS)
    expect(metadata_row(page, "gravity/replicas").first).to_contain_text(replica_site)


def open_markdown(page: Page, message: str, key: str):
    """Filters the run's log to the event whose message contains `message`, opens its full
    message, then the markdown of metadata entry `key`; returns that dialog."""
    log_filter = page.get_by_placeholder("Filter…")
    log_filter.fill(message)
    log_filter.press("Enter")
    page.get_by_role("button", name="View full message").last.click()
    event = page.get_by_role("dialog").last
    expect(event).to_contain_text(message)
    # the entry's label, then its [Show Markdown] link (the markdown-valued entry)
    event.get_by_text(key, exact=True).locator("xpath=following::a[normalize-space()='[Show Markdown]'][1]").click()
    markdown = page.get_by_role("dialog").filter(has_text=key).last
    expect(markdown.locator("table").first).to_be_visible()
    return markdown


def test_run_page_shows_placement_table_and_run_summary(ui, page):
    page.goto(f"{ui.url}/runs/{ui.features_run}")
    expect(page.get_by_text("gravity run summary").first).to_be_visible(timeout=WAIT_MS)

    table = open_markdown(page, "gravity: step raw_items", "gravity/candidates_table")
    expect(table.locator("th").filter(has_text="compute pool")).to_have_count(1)
    # every compute pool is a candidate; raw_items is pinned to aws-us-east-1
    chosen = table.locator("tr").filter(has_text="aws-us-east-1/cpu")
    expect(chosen).to_contain_text("yes")
    expect(table.locator("tr").filter(has_text="onprem-dc/gpu")).to_contain_text("pinned to 'aws-us-east-1'")
    # two dialogs are open (the event, its markdown): Escape closes the top one, but one pressed
    # while the other is still closing is lost, so press until none is left (a few at most)
    dialogs = page.get_by_role("dialog")
    for _ in range(6):
        if dialogs.count() == 0:
            break
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    expect(dialogs).to_have_count(0)

    summary = open_markdown(page, "gravity run summary", "gravity/summary")
    for step in ("raw_items", "raw_events", "raw_eu_customers", "event_features"):
        expect(summary.locator("td").filter(has_text=re.compile(rf"^\s*{step}\s*$")).first).to_be_visible()


def test_rollback_shows_on_the_promoted_model_page(ui, page):
    page.goto(f"{ui.url}/assets/promoted_model")
    expect(metadata_row(page, "rollback/from").first).to_contain_text("2", timeout=WAIT_MS)
    expect(metadata_row(page, "checkpoint/version").first).to_contain_text("1")
    # the rollback is the asset's latest materialization, not only an observation beside it
    expect(page.get_by_text("Never materialized")).to_have_count(0)
    page.goto(f"{ui.url}/assets/promoted_model?view=events")
    expect(page.get_by_text(re.compile(rf"materialized in run {ui.rollback_run[:8]}", re.I)).first).to_be_visible(
        timeout=WAIT_MS)
