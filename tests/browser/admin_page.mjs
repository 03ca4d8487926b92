// The admin page in a real headless Chromium: log in, watch the live tree, restart an
// actor and see its restart count change, pause and resume a consumer.
// Usage: node admin_page.mjs <daemon url> <admin token> <screenshot dir>. Prints one JSON
// line; exits non-zero on any failed expectation. Run by tests/browser.rs.
import { finish, launch, recorder, watchProblems } from "./common.mjs";
const [url, token, shots] = process.argv.slice(2);
const browser = await launch();
const { failures, expect } = recorder();
const report = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const problems = watchProblems(page);

  report.step = "login";
  await page.goto(`${url}/admin`);
  await page.waitForURL(/\/login\?next=%2Fadmin$/, { timeout: 5000 });
  await page.fill("#operator", "Grace");
  await page.fill("#token", token);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/admin$/, { timeout: 5000 });

  report.step = "tree";
  const restarts = page.locator('#tree tr[data-actor="retry-timer"] td.restarts');
  await restarts.waitFor({ timeout: 5000 });
  expect(await restarts.textContent() === "0", "retry-timer starts with 0 restarts");
  expect(await page.locator('#tree tr[data-actor="http"] td:nth-child(2)').textContent() === "running", "http running");
  await page.locator("#workers tr").first().waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${shots}/admin-page.png`, fullPage: true });

  report.step = "restart";
  await page.getByRole("button", { name: "Restart retry-timer" }).click();
  await page.locator("#outcome", { hasText: "restart retry-timer: done." }).waitFor({ timeout: 5000 });
  await page.waitForFunction(() =>
    document.querySelector('#tree tr[data-actor="retry-timer"] td.restarts')?.textContent === "1",
    null, { timeout: 5000 });

  report.step = "pause";
  await page.getByRole("button", { name: "Pause the primecheck consumer" }).click();
  // "paused" once every worker's open pull has ended (within a second): no pull is open.
  await page.locator('.card[data-consumer="primecheck"]', { hasText: "paused" }).waitFor({ timeout: 5000 });
  const id = await page.evaluate(async () => {
    const r = await fetch("/prime-check", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ number: "101", email: "admin-ui@example.com" }) });
    return (await r.json()).id;
  });
  const statusOf = () => page.evaluate(async (id) => (await (await fetch(`/prime-check/${id}`)).json()).status, id);
  // After the request was queued every worker still rests: nobody took the check.
  const consumer = await page.evaluate(async () =>
    (await (await fetch("/admin/status")).json()).consumers.find((c) => c.name === "primecheck"));
  expect(consumer.paused && consumer.workers_resting === consumer.workers,
    `every primecheck worker rests: ${JSON.stringify(consumer)}`);
  expect(await statusOf() === "pending", "a paused consumer takes no work");
  await page.screenshot({ path: `${shots}/admin-paused.png`, fullPage: true });

  report.step = "resume";
  await page.getByRole("button", { name: "Resume the primecheck consumer" }).click();
  let status = "pending";
  for (let i = 0; i < 100 && status !== "done"; i++) {
    await page.waitForTimeout(100);
    status = await statusOf();
  }
  expect(status === "done", `after resume the request is ${status}`);

  expect(problems.length === 0, `console errors (CSP?): ${problems.join(" | ")}`);
  report.step = "done";
} catch (e) {
  failures.push(`${String(e)} (at: ${report.step})`);
} finally {
  await browser.close();
}
finish(failures, report);
