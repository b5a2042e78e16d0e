// Opens Swagger UI in Debian's headless Chromium, checks that it lists the leak operations, runs
// GET /leak-test through "Try it out" / "Execute", and prints what it saw as one JSON line.
//
// usage: node swagger.mjs BASE_URL [SCREENSHOT.png]
import { chromium } from "playwright-core";

const [base, screenshot] = process.argv.slice(2);
if (!base) {
  console.error("usage: node swagger.mjs BASE_URL [SCREENSHOT.png]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(`${base}/swagger/index.html`, { waitUntil: "load" });
  await page.waitForSelector(".opblock", { timeout: 20000 });
  const operations = await page.$$eval(".opblock", (blocks) =>
    blocks.map((block) => {
      const method = block.querySelector(".opblock-summary-method")?.textContent?.trim();
      const path = block.querySelector(".opblock-summary-path")?.getAttribute("data-path");
      return `${method} ${path}`;
    }),
  );

  const leakTest = page.locator(".opblock-get", { has: page.locator('[data-path="/leak-test"]') });
  await leakTest.locator(".opblock-summary").click();
  await leakTest.locator(".try-out__btn").click();
  await leakTest.locator("button.execute").click();
  const status = leakTest.locator(".live-responses-table tbody .response-col_status").first();
  await status.waitFor({ timeout: 20000 });
  const executedStatus = (await status.textContent()).trim();
  const body = (await leakTest.locator(".live-responses-table .microlight").first().textContent()) ?? "";
  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: true });
  }
  console.log(JSON.stringify({ title: await page.title(), operations, executedStatus, body, errors }));
} finally {
  await browser.close();
}
