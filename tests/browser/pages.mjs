// Drives rtserve's pages in the system Chromium (playwright-core, no browser download):
//   node pages.mjs BASE_URL SCREENSHOT_DIR MODEL
// 1. `/` while a load runs (the caller starts it): the page updates every second, its charts
//    change, and its request rate, p50 and p99 for MODEL match what `/metrics` says over the
//    same window (within TOLERANCE); on a phone-sized screen nothing overflows sideways.
// 2. `/docs`: runs one inference of MODEL from Swagger UI's "Try it out".
// Every request must go to BASE_URL (the pages work offline), and no page may throw.
// Prints a JSON summary on its last line; exits non-zero on the first failed check.
import { check, runChecks } from "./harness.mjs";

const [base, shots, model] = process.argv.slice(2);
// Rates and percentiles: the page's window and the test's /metrics window differ by the
// moments at which each was read (well under a second of a window of about ten).
const TOLERANCE = 0.25;

async function metrics() {
  const text = await (await fetch(base + "/metrics")).text();
  let requests = 0;
  const buckets = new Map();
  for (const line of text.split("\n")) {
    if (!line.includes('model="' + model + '"')) continue;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (line.startsWith("rtserve_requests_total{")) requests += value;
    if (line.startsWith("rtserve_request_duration_seconds_bucket{") && line.includes('outcome="success"')) {
      const le = line.match(/le="([^"]+)"/)[1];
      if (le !== "+Inf") buckets.set(Number(le), (buckets.get(Number(le)) || 0) + value);
    }
  }
  const bounds = [...buckets.keys()].sort((a, b) => a - b);
  return { t: Date.now(), requests, bounds, cumulative: bounds.map((b) => buckets.get(b)) };
}

// Prometheus's histogram_quantile over the difference of two cumulative histograms (written
// apart from the page's so that a mistake in one shows).
function quantile(q, a, b) {
  const counts = b.cumulative.map((c, i) => c - a.cumulative[i]);
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  const i = counts.findIndex((c) => c >= rank);
  if (i < 0) return b.bounds[b.bounds.length - 1];
  const lower = i ? b.bounds[i - 1] : 0, below = i ? counts[i - 1] : 0;
  return lower + (b.bounds[i] - lower) * (rank - below) / (counts[i] - below);
}

function near(page, test, what) {
  const ok = page != null && test != null && Math.abs(page - test) <= TOLERANCE * Math.max(page, test);
  check(ok, `${what}: page ${page} against /metrics ${test}`);
}

const summary = { external: [], errors: [] };
await runChecks(summary, async (browser) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  // Anything not from the server is refused and recorded: the pages must work offline.
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(base + "/")) return route.continue();
    summary.external.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => summary.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") summary.errors.push(m.text()); });

  // 1. The status page.
  await page.goto(base + "/");
  const updates = () => page.evaluate(() => Number(document.body.dataset.updates));
  await page.waitForFunction(() => Number(document.body.dataset.updates) >= 1);
  const first = await metrics();
  const card = `section.card[data-model="${model}"]`;
  await page.waitForSelector(card);
  const chart = () => page.$eval(card + ' canvas[data-c="rate"]', (c) => c.toDataURL());
  await page.waitForFunction(() => Number(document.body.dataset.updates) >= 3);
  const before = await chart();
  const seen = await updates();
  await page.waitForFunction((n) => Number(document.body.dataset.updates) >= n + 6, seen, { timeout: 20000 });
  const after = await chart();
  check(before !== after, "the request-rate chart changed as snapshots came in");
  // Read the page right after it takes a snapshot, and /metrics at once.
  const n = await updates();
  await page.waitForFunction((k) => Number(document.body.dataset.updates) > k, n);
  const last = await metrics();
  const shown = await page.$eval(card, (el) => ({ ...el.dataset, text: el.innerText }));
  const window = (last.t - first.t) / 1000;
  const test = {
    rate: (last.requests - first.requests) / window,
    p50: quantile(0.5, first, last),
    p99: quantile(0.99, first, last),
  };
  summary.status = { window_s: window, page: { rate: Number(shown.rate), p50: Number(shown.p50), p99: Number(shown.p99) }, metrics: test };
  check(test.rate > 0, "the load ran during the window");
  near(Number(shown.rate), test.rate, "requests/s");
  near(Number(shown.p50), test.p50, "p50");
  near(Number(shown.p99), test.p99, "p99");
  check(shown.text.includes("READY"), "the model's state is shown");
  await page.screenshot({ path: shots + "/status-page.png", fullPage: true });
  // A phone: one column, nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `nothing overflows a 390 px screen (by ${overflow} px)`);
  await page.setViewportSize({ width: 1280, height: 860 });

  // 2. The API page: one inference through "Try it out".
  await page.goto(base + "/docs");
  const operation = page.locator("#operations-inference-infer");
  await operation.waitFor();
  await operation.locator(".opblock-summary").click();
  await operation.getByRole("button", { name: "Try it out" }).click();
  await operation.locator('tr[data-param-name="model"] input').fill(model);
  await operation.getByRole("button", { name: "Execute" }).click();
  const status = operation.locator(".live-responses-table .response .response-col_status").first();
  await status.waitFor({ timeout: 20000 });
  const code = (await status.innerText()).trim();
  const body = await operation.locator(".live-responses-table .response-col_description pre").first().innerText();
  summary.docs = { status: code, body: body.slice(0, 200) };
  check(code === "200", "the inference from /docs answered 200, not " + code);
  check(body.includes('"outputs"') && body.includes('"sum"'), "the reply holds the model's outputs");
  await page.screenshot({ path: shots + "/api-docs.png" });

  check(summary.external.length === 0, "no request left the server: " + summary.external.join(", "));
  check(summary.errors.length === 0, "no page error: " + summary.errors.join(" | "));
});
