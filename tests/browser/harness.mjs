// What the browser scripts share: the system Chromium (playwright-core downloads none; set
// CHROMIUM to use another), a failed check as an exception, and the ending of a checking script.
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox"],
  });
}

export function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
}

// Runs `body(browser)` in a fresh browser, then prints `summary` as JSON on the last line of
// stdout (the Python tests read it) whether the checks passed or not; a failed check or any
// other error also goes to stderr and makes the exit status non-zero. The browser is closed in
// every case.
export async function runChecks(summary, body) {
  const browser = await launch();
  try {
    await body(browser);
    console.log(JSON.stringify(summary));
  } catch (e) {
    console.log(JSON.stringify(summary));
    console.error(e.stack || String(e));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}
