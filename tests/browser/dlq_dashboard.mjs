// The DLQ dashboard in a real headless Chromium: log in by keyboard, filter, open a detail,
// reprocess two messages and watch them resolve, discard one.
// Usage: node dlq_dashboard.mjs <daemon url> <admin token> <screenshot dir>. Prints one JSON
// line; exits non-zero on any failed expectation. Run by tests/browser.rs.
import { finish, launch, recorder, watchProblems } from "./common.mjs";
const [url, token, shots] = process.argv.slice(2);
const browser = await launch();
const { failures, expect } = recorder();
const report = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = watchProblems(page);

  // Without a session the dashboard sends the operator to the login page, and back.
  await page.goto(`${url}/dlq/dashboard`);
  await page.waitForURL(/\/login\?next=/, { timeout: 5000 });
  await page.keyboard.press("Tab");
  await page.keyboard.type("Ada");
  await page.keyboard.press("Tab");
  await page.keyboard.type("wrong-token-000000");
  await page.keyboard.press("Enter");
  await page.locator("#error").waitFor({ state: "visible", timeout: 5000 });
  expect((await page.locator("#error").textContent()).includes("not an admin token"), "bad token explained");
  await page.fill("#token", token);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/dlq\/dashboard$/, { timeout: 5000 });
  // The page asks for the session after it loads, then shows the operator.
  await page
    .waitForFunction(() => document.querySelector("#operator")?.textContent === "Ada", null, { timeout: 5000 })
    .catch(() => {});
  expect(await page.locator("#operator").textContent() === "Ada", "operator shown");

  report.step = "list";
  const rows = page.locator("#rows tr");
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length === 4, null, { timeout: 10000 });
  const pending = await page.locator('.card[data-status="pending"] strong').textContent();
  expect(pending === "4", `pending card shows ${pending}`);
  await page.screenshot({ path: `${shots}/dlq-dashboard.png`, fullPage: true });

  report.step = "text search";
  // Filter by text in the error: only the timed-out prime check.
  await page.fill('input[name="q"]', "TIME LIMIT");
  await page.click('#filters button[type="submit"]');
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length === 1, null, { timeout: 5000 });
  expect((await rows.first().textContent()).includes("primecheck.requested"), "text search finds the prime check");
  await page.fill('input[name="q"]', "");

  report.step = "subject filter";
  // Filter by subject: the three refused emails.
  await page.selectOption('select[name="subject"]', "email.send");
  await page.click('#filters button[type="submit"]');
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length === 3, null, { timeout: 5000 });

  // Detail with the payload as formatted JSON.
  await rows.first().locator("button.link").click();
  await page.locator("#detail").waitFor({ state: "visible" });
  const payload = JSON.parse(await page.locator("#detail-payload").textContent());
  expect(payload.email === "dlq-ui@example.com", `payload: ${JSON.stringify(payload)}`);
  const trace = await page.locator("#detail-trace").textContent();
  expect(/^[0-9a-f]{32}$/.test(trace), `trace id: ${trace}`);
  const history = await page.locator("#detail-history").textContent();
  expect(history.includes("email.send") && history.includes("failed"), `history: ${history}`);
  await page.screenshot({ path: `${shots}/dlq-detail.png`, fullPage: true });

  // Reprocess two (the SMTP server accepts mail now) and watch them resolve.
  const ids = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.id));
  await rows.nth(0).locator('input[type="checkbox"]').check();
  await rows.nth(1).locator('input[type="checkbox"]').check();
  await page.fill("#reason", "SMTP fixed");
  await page.click("#reprocess");
  await page.locator("#outcome", { hasText: "reprocess: 2 done, 0 not done." }).waitFor({ timeout: 5000 });
  const resolved = async () => {
    // Wait for the list's answer (an event), not a fixed pause.
    await Promise.all([
      page.waitForResponse((r) => r.url().includes("/api/dlq/messages?"), { timeout: 5000 }),
      page.click('#filters button[type="submit"]'),
    ]);
    return page.evaluate((want) => want.every((id) =>
      document.querySelector(`#rows tr[data-id="${id}"] td:nth-child(5)`)?.textContent === "resolved"),
      ids.slice(0, 2));
  };
  let done = false;
  for (let i = 0; i < 60 && !done; i++) done = await resolved();
  expect(done, "the reprocessed messages resolve");
  await page.screenshot({ path: `${shots}/dlq-reprocessed.png`, fullPage: true });

  // Discard the third, by keyboard: Space ticks the box, Enter presses the button.
  await page.locator(`#rows tr[data-id="${ids[2]}"] input[type="checkbox"]`).focus();
  await page.keyboard.press("Space");
  await page.fill("#reason", "not needed");
  await page.locator("#discard").focus();
  await page.keyboard.press("Enter");
  await page.locator("#outcome", { hasText: "discard: 1 done, 0 not done." }).waitFor({ timeout: 5000 });
  const status = await page.locator(`#rows tr[data-id="${ids[2]}"] td:nth-child(5)`).textContent();
  expect(status === "discarded", `discarded row shows ${status}`);

  // On a phone-sized screen nothing but the tables (which scroll) is wider than the screen.
  report.step = "narrow";
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  expect(overflow <= 390, `the page is ${overflow}px wide on a 390px screen`);
  await page.screenshot({ path: `${shots}/dlq-narrow.png`, fullPage: true });

  expect(problems.length === 0, `console errors (CSP?): ${problems.join(" | ")}`);
  report.reprocessed = ids.slice(0, 2);
  report.discarded = ids[2];
} catch (e) {
  failures.push(`${String(e)} (at: ${report.step}; rows: ${await browser.contexts()[0]?.pages()[0]?.locator("#rows").textContent().catch(() => "?")}; error: ${await browser.contexts()[0]?.pages()[0]?.locator("#error").textContent().catch(() => "?")})`);
} finally {
  await browser.close();
}
finish(failures, report);
