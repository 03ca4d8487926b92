// The DLQ dashboard's groups and edit-and-replay in a real headless Chromium: the page opens
// on the groups, shows a group's letters, previews an edit as a diff (and a refused one with
// its reason), replays it and sees it resolve, replays the rest of the group as a safe replay
// job (its progress bar filling), then discards another group at once.
// Usage: node dlq_groups_edit.mjs <daemon url> <admin token> <screenshot dir>. Prints one
// JSON line; exits non-zero on any failed expectation. Run by tests/browser.rs.
import { finish, launch, recorder, watchProblems } from "./common.mjs";
const [url, token, shots] = process.argv.slice(2);
const browser = await launch();
const { failures, expect } = recorder();
const report = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = watchProblems(page);
  page.on("dialog", (d) => { report.confirmed = d.message(); d.accept(); });

  report.step = "login";
  await page.goto(`${url}/login?next=/dlq/dashboard`);
  await page.fill("#operator", "Ada");
  await page.fill("#token", token);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/dlq\/dashboard$/, { timeout: 5000 });

  report.step = "groups";
  const groups = page.locator("#groups tr");
  await page.waitForFunction(() => document.querySelectorAll("#groups tr").length === 2, null, { timeout: 10000 });
  const first = await groups.first().textContent();
  expect(first.startsWith("2") && first.includes("email.send") && first.includes("no such user here"),
    `the largest group first: ${first}`);
  expect(first.includes("SMTP server <host> refused") && first.includes("(<n>): <n> no such user here"),
    `values replaced: ${first}`);
  const emailGroup = await groups.first().getAttribute("data-fingerprint");
  const otherGroup = await groups.nth(1).getAttribute("data-fingerprint");
  await page.screenshot({ path: `${shots}/dlq-groups.png`, fullPage: true });

  report.step = "show a group";
  await groups.first().getByRole("button", { name: /Show the 2 letters/ }).click();
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length === 2, null, { timeout: 5000 });
  expect(await page.inputValue("#group-filter") === emailGroup, "the list is filtered by the group");

  report.step = "edit refused";
  const rows = page.locator("#rows tr");
  const id = await rows.first().getAttribute("data-id");
  await rows.first().locator("button.link").click();
  await page.locator("#edit").waitFor({ state: "visible" });
  expect(await page.inputValue("#edit-value") === "typo@exmaple.com", "the current value is offered");
  await page.fill("#edit-value", "not an address");
  await page.click("#edit-preview");
  await page.locator("#edit-outcome", { hasText: "Not accepted" }).waitFor({ timeout: 5000 });
  const refusal = await page.locator("#edit-outcome").textContent();
  expect(refusal.includes("email must be an address"), `refusal says why: ${refusal}`);
  expect(await page.locator("#edit-diff").isHidden(), "no diff for a refused edit");

  report.step = "edit preview";
  await page.fill("#edit-value", "typo@example.com");
  await page.fill("#edit-reason", "typo in the domain");
  await page.keyboard.press("Enter");
  await page.locator("#edit-diff").waitFor({ state: "visible", timeout: 5000 });
  const before = await page.locator("#edit-diff-rows .diff-before").textContent();
  const after = await page.locator("#edit-diff-rows .diff-after").textContent();
  expect(before === '"typo@exmaple.com"' && after === '"typo@example.com"', `diff: ${before} -> ${after}`);
  await page.screenshot({ path: `${shots}/dlq-edit-diff.png`, fullPage: true });

  report.step = "edit send";
  await page.click("#edit-send");
  await page.locator("#edit-outcome", { hasText: "Edited and replayed as event" }).waitFor({ timeout: 5000 });
  const audit = await page.locator("#detail-audit").textContent();
  expect(audit.includes("Ada: edit") && audit.includes("typo@example.com"), `audit: ${audit}`);
  const resolved = async () => {
    await Promise.all([
      page.waitForResponse((r) => r.url().includes("/api/dlq/messages?"), { timeout: 5000 }),
      page.click('#filters button[type="submit"]'),
    ]);
    return page.evaluate((want) =>
      document.querySelector(`#rows tr[data-id="${want}"] td:nth-child(5)`)?.textContent === "resolved", id);
  };
  let done = false;
  for (let i = 0; i < 60 && !done; i++) done = await resolved();
  expect(done, "the edited letter resolves");

  report.step = "replay a group";
  // The last pending letter of the email group, replayed safely from its group's button.
  await page.locator(`#groups tr[data-fingerprint="${emailGroup}"]`).getByRole("button", { name: /Replay/ }).click();
  await page.locator("#group-outcome", { hasText: "Replay job" }).waitFor({ timeout: 5000 });
  await page.waitForFunction(() => document.querySelector("#jobs li")?.dataset.state === "done", null, { timeout: 20000 });
  const progress = await page.locator("#jobs li progress").first().evaluate((p) => p.value);
  expect(progress === 1, `the progress bar is full: ${progress}`);
  const summary = await page.locator("#jobs li .job-summary").first().textContent();
  expect(summary.includes("done: 1/1 done — 1 ok"), `job summary: ${summary}`);
  await page.screenshot({ path: `${shots}/dlq-replay-done.png`, fullPage: true });
  await page.waitForFunction((fp) => !document.querySelector(`#groups tr[data-fingerprint="${fp}"]`), emailGroup, { timeout: 5000 });

  report.step = "discard a group";
  await page.locator(`#groups tr[data-fingerprint="${otherGroup}"]`).getByRole("button", { name: /Discard/ }).click();
  await page.locator("#group-outcome", { hasText: "Discarded 1 letter of the group" }).waitFor({ timeout: 5000 });
  expect(!(await page.locator(`#groups tr[data-fingerprint="${otherGroup}"]`).count()), "the group is gone");
  expect(await page.locator("#groups-empty").isVisible(), "no pending dead letter is left");
  await page.screenshot({ path: `${shots}/dlq-group-discarded.png`, fullPage: true });

  // The refused edit's 422 is the one error response expected.
  const unexpected = problems.filter((p) => !p.includes("status of 422"));
  expect(unexpected.length === 0, `console errors (CSP?): ${unexpected.join(" | ")}`);
  report.edited = id;
  report.discarded_group = otherGroup;
} catch (e) {
  failures.push(`${String(e)} (at: ${report.step}; error: ${await browser.contexts()[0]?.pages()[0]?.locator("#error").textContent().catch(() => "?")})`);
} finally {
  await browser.close();
}
finish(failures, report);
