"""The kiosk screen in headless Chromium (Debian's, driven by Playwright): what a shopper and
a clerk see and do, with screenshots kept in ``test-artifacts/screen/``."""

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dropline.system import LocalSystem, SystemOptions

pytestmark = pytest.mark.timeout(180)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts" / "screen"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[LocalSystem]:
    s = LocalSystem(
        tmp_path, SystemOptions(kiosks_per_store=1, compartments_per_kiosk=6, tote_max_age_s=3600)
    )
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def test_kiosk_screen_in_chromium(system: LocalSystem, tmp_path: Path) -> None:
    if not HAVE_CHROMIUM:
        pytest.skip("Debian's chromium is not installed (scripts/system-deps.sh installs it)")
    from playwright.async_api import async_playwright, expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kiosk = system.kiosks[0]
    assert kiosk.agent.screen is not None
    url = kiosk.agent.screen.url
    ret = await system.authorize_return(1)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=FLAGS,
            viewport={"width": 1024, "height": 768},
        )
        try:
            page = await browser.new_page()
            await page.goto(url)
            await expect(page.locator("#headline")).to_have_text("Scan your return or pickup code")
            await expect(page.locator("#net")).to_have_text("● online")
            await page.screenshot(path=ARTIFACTS / "1-idle.png")

            await page.fill("#code", "ABCD-EFGH-J")
            await page.click("#send")
            await expect(page.locator("#detail")).to_contain_text("That code is not right")
            await page.screenshot(path=ARTIFACTS / "2-mistyped-code.png")

            await page.fill("#code", ret["voucher"]["short_code_display"])
            await page.click("#send")
            await expect(page.locator("#headline")).to_have_text("Thank you!", timeout=20_000)
            door = await page.locator("#door").inner_text()
            assert door in {c.id for c in kiosk.agent.config.compartments}
            await expect(page.locator("#detail")).to_contain_text(f"door {door}")
            await page.screenshot(path=ARTIFACTS / "3-accepted.png")

            resp = await system.operator.put(
                "/v1/stores/store-1/clerks/clerk-1", json={"name": "Ada", "pin": "4321"}
            )
            assert resp.status == 200

            async def clerk_known() -> bool:
                config = await kiosk.agent.db.store_config()
                return config is not None and bool(config.clerks)

            await system.wait_until(clerk_known, 20)
            await page.click("#staffbtn")
            await page.fill("#pin", "9999")
            await page.click("#pinok")
            await expect(page.locator("#msg")).to_have_text("Wrong PIN.")
            await page.fill("#pin", "4321")
            await page.click("#pinok")
            await expect(page.locator("#clerkname")).to_contain_text("Ada")
            await expect(page.locator("#doors .d")).to_have_count(6)
            await expect(page.locator("#doors .d.busy b")).to_have_text([door])
            await page.screenshot(path=ARTIFACTS / "4-clerk.png", full_page=True)
            await page.locator("#doors .d").nth(5).locator("text=Out of order").click()
            await expect(page.locator("#doors .d.ooo")).to_have_count(1)
            last = kiosk.agent.config.compartments[5].id
            row = await kiosk.agent.db.compartment(last)
            assert row is not None and row.out_of_order
            await page.click("#logout")
            await expect(page.locator("#clerk")).to_be_hidden()

            await system.broker.stop()
            await expect(page.locator("#offline")).to_be_visible(timeout=20_000)
            await expect(page.locator("#offline")).to_contain_text("Working offline")
            await page.screenshot(path=ARTIFACTS / "5-offline.png")
        finally:
            await browser.close()
