// The login page's `next` in a real headless Chromium: after logging in, the browser lands
// on a page of this daemon whatever `next` says; a path of the daemon is followed.
// Usage: node login_redirect.mjs <daemon url> <admin token>. Prints one JSON line; exits
// non-zero on any failed expectation. Run by tests/browser.rs.
import { finish, launch, recorder } from "./common.mjs";

const [url, token] = process.argv.slice(2);
const origin = new URL(url).origin;
const browser = await launch();
const { failures, expect } = recorder();
const landed = {};

// `next` as it appears in the address bar (already URL-encoded), and where it must lead.
// The foreign host is a .localhost name, which Chromium resolves to loopback by itself: a
// regression is caught without a name lookup leaving the machine.
const cases = [
  ["/%5Cevil.localhost:9", "/dlq/dashboard"],
  ["/%09/evil.localhost:9", "/dlq/dashboard"],
  ["/%5C/evil.localhost:9", "/dlq/dashboard"],
  ["//evil.localhost:9", "/dlq/dashboard"],
  ["/%2F/evil.localhost:9", "/dlq/dashboard"],
  ["https://evil.localhost:9/", "/dlq/dashboard"],
  ["javascript:alert(1)", "/dlq/dashboard"],
  ["/admin%3Fview%3Dtree", "/admin?view=tree"],
];

async function loginWith(next) {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(`${url}/login?next=${next}`);
    await page.fill("#operator", "Redirect");
    await page.fill("#token", token);
    await page.keyboard.press("Enter");
    await page.waitForURL((u) => !(u.origin === origin && u.pathname === "/login"), { timeout: 5000 });
    return page.url();
  } catch (e) {
    return `error: ${e.message}`;
  } finally {
    await context.close();
  }
}

try {
  for (const [next, expected] of cases) {
    const at = await loginWith(next);
    landed[next] = at;
    let u = null;
    try { u = new URL(at); } catch { /* reported below */ }
    expect(u !== null && u.origin === origin, `next=${next} left the daemon: ${at}`);
    expect(u !== null && u.pathname + u.search === expected, `next=${next} landed on ${at}, not ${expected}`);
  }
} catch (e) {
  failures.push(`unexpected: ${e.message}`);
} finally {
  await browser.close();
}
finish(failures, { landed });
