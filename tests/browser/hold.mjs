// Keeps rtserve's status page open in the system Chromium for a while (the page polls the
// feed every second): node hold.mjs BASE_URL SECONDS. For scripts/bench/status_page_cost.sh.
import { chromium } from "playwright-core";

const [base, seconds] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox"],
});
const page = await browser.newPage();
await page.goto(base + "/");
await page.waitForTimeout(Number(seconds) * 1000);
console.log("status page updates:", await page.evaluate(() => document.body.dataset.updates));
await browser.close();
