// The status page on a server that checks tokens (docs/security.md), in the system Chromium:
//   node token.mjs BASE_URL TOKEN MODEL
// The page loads without a token; its feed answers 401, so it shows the token form and draws no
// model; once the token is given, its refreshes carry `Authorization: Bearer TOKEN` and the
// model's card appears. Prints a JSON summary on its last line; exits non-zero on a failed check.
import { check, runChecks } from "./harness.mjs";

const [base, token, model] = process.argv.slice(2);

const summary = { feed: [], errors: [] };
await runChecks(summary, async (browser) => {
  const page = await browser.newPage();
  page.on("pageerror", (e) => summary.errors.push(String(e)));
  page.on("response", (r) => {
    if (r.url().endsWith("/v2/status")) {
      summary.feed.push({ status: r.status(), bearer: Boolean(r.request().headers()["authorization"]) });
    }
  });
  await page.goto(base + "/");
  await page.locator("#auth").waitFor({ state: "visible" });
  check(summary.feed.length >= 1 && summary.feed[0].status === 401, "the feed first answered 401");
  check((await page.locator("section.card").count()) === 0, "no model is drawn without a token");
  await page.fill("#token", token);
  await page.click('#auth button[type="submit"]');
  await page.waitForSelector(`section.card[data-model="${model}"]`, { timeout: 20000 });
  check(await page.locator("#auth").isHidden(), "the form is hidden once the token is given");
  const served = summary.feed.filter((f) => f.status === 200);
  check(served.length >= 1 && served.every((f) => f.bearer), "the feed answered 200 to requests with the token");
  check(summary.errors.length === 0, "no page error: " + summary.errors.join(" | "));
});
