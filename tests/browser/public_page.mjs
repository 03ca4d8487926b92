// The public page in a real headless Chromium, driven by keyboard only on a phone-sized
// screen: a bad number is explained on the page; a good one is followed to its result.
// Usage: node public_page.mjs <daemon url> <screenshot dir>. Prints one JSON line; exits
// non-zero on any failed expectation. Run by tests/browser.rs.
import { launch, recorder, watchProblems } from "./common.mjs";

const [url, shots] = process.argv.slice(2);
const browser = await launch();
const { failures, expect } = recorder();
try {
  const page = await browser.newPage({ viewport: { width: 390, height: 780 } });
  const problems = watchProblems(page);

  const response = await page.goto(url);
  expect(response.status() === 200, `GET / answered ${response.status()}`);
  expect((response.headers()["content-security-policy"] || "").includes("script-src 'self'"),
    "no CSP on the page");
  expect(await page.title() === "primed — is it prime?", "wrong title");

  // Keyboard only: Tab to the number, type; Tab to the email, type; Enter submits.
  await page.keyboard.press("Tab");
  expect(await page.evaluate(() => document.activeElement.id) === "number", "Tab does not reach the number");
  await page.keyboard.type("-5");
  await page.keyboard.press("Tab");
  await page.keyboard.type("browser@example.com");
  await page.keyboard.press("Enter");
  await page.locator("#error").waitFor({ state: "visible", timeout: 5000 });
  const error = await page.locator("#error").textContent();
  expect(error.includes("digits only"), `bad input explained as: ${error}`);
  await page.screenshot({ path: `${shots}/public-page-error.png`, fullPage: true });

  await page.fill("#number", "");
  await page.focus("#number");
  await page.keyboard.type("2305843009213693951");
  await page.keyboard.press("Enter");
  await page.locator("#request-status", { hasText: "done" }).waitFor({ timeout: 20000 });
  const result = await page.locator("#request-result").textContent();
  expect(result === "2305843009213693951 is prime.", `result: ${result}`);
  expect(await page.locator("#error").isHidden(), "the old error stays on the page");
  const id = await page.locator("#request-id").textContent();
  await page.screenshot({ path: `${shots}/public-page-result.png`, fullPage: true });

  // A composite shows its factor.
  await page.fill("#number", "91");
  await page.keyboard.press("Enter");
  await page.locator("#request-result", { hasText: "not prime" }).waitFor({ timeout: 20000 });
  const composite = await page.locator("#request-result").textContent();
  expect(composite === "91 is not prime: 7 divides it.", `composite: ${composite}`);

  expect(problems.length === 0, `console errors (CSP?): ${problems.join(" | ")}`);
  console.log(JSON.stringify({ ok: failures.length === 0, id, result, failures }));
} catch (e) {
  failures.push(String(e));
  console.log(JSON.stringify({ ok: false, failures }));
} finally {
  await browser.close();
}
process.exit(failures.length === 0 ? 0 : 1);
