// What the browser scripts share: Chromium from Debian (or $CHROMIUM), a record of failed
// expectations, and the report line tests/browser.rs reads.
import { createRequire } from "node:module";

// CommonJS resolution honours NODE_PATH (where ensure-services.sh installs playwright-core).
const { chromium } = createRequire(import.meta.url)("playwright-core");

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
}

export function recorder() {
  const failures = [];
  return { failures, expect: (ok, what) => { if (!ok) failures.push(what); } };
}

// Console errors and page errors; the 401s a not-yet-logged-in page provokes are expected.
export function watchProblems(page) {
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().includes("status of 401")) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(e.message));
  return problems;
}

export function finish(failures, report) {
  console.log(JSON.stringify({ ok: failures.length === 0, failures, ...report }));
  process.exit(failures.length === 0 ? 0 : 1);
}
