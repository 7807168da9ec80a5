// Keeps rtserve's status page open in the system Chromium for a while (the page polls the
// feed every second): node hold.mjs BASE_URL SECONDS. For scripts/bench/status_page_cost.sh.
import { launch } from "./harness.mjs";

const [base, seconds] = process.argv.slice(2);
const browser = await launch();
const page = await browser.newPage();
await page.goto(base + "/");
await page.waitForTimeout(Number(seconds) * 1000);
console.log("status page updates:", await page.evaluate(() => document.body.dataset.updates));
await browser.close();
