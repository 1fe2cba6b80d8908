// Drives the stepd dashboard in Debian's headless Chromium. Run by
// tests/tests/dashboard.rs, which starts the server and submits the jobs:
//   STEPD_URL, STEPD_TOKEN, JOB_ID (the hang sample), JOB2_ID (a long
//   step for the other buttons), SCREENSHOT_DIR, CHROMIUM (default
//   /usr/bin/chromium)
// Exits non-zero, with the reason, at the first expectation that fails.
// Every button is pressed and checked; jobs and artifacts are reached by
// keyboard; any uncaught page error or console error fails the run (the
// browser's own "Failed to load resource" lines for the API's deliberate
// refusals and the unreachable-server step excepted).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const url = process.env.STEPD_URL;
const token = process.env.STEPD_TOKEN;
const jobId = process.env.JOB_ID;
const job2 = process.env.JOB2_ID;
const shots = process.env.SCREENSHOT_DIR;
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const step = (what) => console.log(`dashboard e2e: ${what}`);
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  let reason = "e2e";
  page.on("dialog", (d) => d.accept(reason));
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console error: ${m.text()}`);
  });
  // Tab forward until `selector` has the focus: proves it is reachable by
  // keyboard, in the page's own order.
  const tabTo = async (selector, limit = 400) => {
    for (let i = 0; i < limit; i++) {
      await page.keyboard.press("Tab");
      if (await page.evaluate((sel) => !!document.activeElement && document.activeElement.matches(sel), selector)) return;
    }
    throw new Error(`${selector} is not reachable by Tab`);
  };
  const press = async (action, expect) => {
    await page.click(`button[data-action="${action}"]`);
    await page.waitForFunction((expect) => document.querySelector("#control-message").textContent.includes(expect),
      expect, { timeout: 15000 });
  };

  step("a wrong token is refused with the API's message");
  await page.goto(url);
  await page.fill("#token", "not-the-token");
  await page.click("#login-form button");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("unknown bearer token"));
  await page.screenshot({ path: `${shots}/01-wrong-token.png` });

  step("the right token opens the jobs list");
  await page.fill("#token", token);
  await page.click("#login-form button");
  await page.waitForSelector(`#jobs-table button[data-open="${jobId}"]`);

  step("the job is opened by keyboard: Tab to its row's button, Enter");
  await page.focus("#status-filter");
  await tabTo(`#jobs-table button[data-open="${jobId}"]`);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#job-status").textContent === "running");

  step("the timeline shows what each step was granted, by name");
  await page.waitForFunction(
    () => (document.querySelector('#timeline li[data-step="warm-up"] .grants') || {}).textContent === "grants: env LANG",
    undefined,
    { timeout: 30000 },
  );

  step("Pause while the first step is silent");
  reason = "look before the retry";
  await page.click('button[data-action="pause"]');
  await page.waitForFunction(() => document.querySelector("#control-message").textContent.includes("accepted"));

  step("the soft reset appears on the timeline and the job holds");
  await page.waitForSelector('#timeline li[data-step="warm-up"] .attempt[data-strategy="soft_reset"]', { timeout: 60000 });
  await page.waitForSelector('#events li[data-event="task.control.pause.active"]', { timeout: 30000 });
  await page.waitForTimeout(1500);
  const held = await page.evaluate(() => ({
    status: document.querySelector("#job-status").textContent,
    starts: document.querySelectorAll('#events li[data-event="task.step.attempt.started"]').length,
    live: document.querySelector("#live-control").textContent,
  }));
  if (held.status !== "running" || held.starts !== 1 || !held.live.includes("paused")) {
    throw new Error(`the job did not hold: ${JSON.stringify(held)}`);
  }
  await page.screenshot({ path: `${shots}/02-paused-after-soft-reset.png`, fullPage: true });

  step("Resume releases it and the job succeeds");
  reason = "";
  await page.click('button[data-action="resume"]');
  await page.waitForFunction(() => document.querySelector("#job-status").textContent === "succeeded", null, { timeout: 60000 });
  await page.waitForFunction(() => [...document.querySelectorAll("#timeline .attempt")]
    .some((chip) => chip.textContent.includes("fuel")));
  await page.screenshot({ path: `${shots}/03-succeeded.png`, fullPage: true });

  step("the last step's attempt lists its HTTP requests, the refused one with its reason");
  const origin = process.env.HTTP_ORIGIN;
  await page.waitForFunction((origin) => {
    const rows = [...document.querySelectorAll('#timeline li[data-step="call"] .http li')].map((li) => li.textContent);
    return rows.some((r) => r.includes(`GET · ${origin}/ping · 200`))
      && rows.some((r) => r.includes("GET · http://169.254.169.254/latest/meta-data/ · denied: http://169.254.169.254 is not a granted origin"));
  }, origin, { timeout: 30000 });
  const grantsLine = await page.evaluate(() => (document.querySelector('#timeline li[data-step="call"] .grants') || {}).textContent);
  if (grantsLine !== `grants: http ${origin}`) throw new Error(`the call step's grants line: ${grantsLine}`);

  step("a refused action shows the API's message");
  await page.click('button[data-action="pause"]');
  await page.waitForFunction(() => document.querySelector("#control-message").textContent.includes("has ended"));

  step("the step log is viewable in the page, reached by keyboard");
  await page.waitForSelector('#artifacts button[data-path="logs/steps/step-0000.log"]');
  await page.focus('button[data-action="resume_from_step"]');
  await tabTo('#artifacts button[data-path="logs/steps/step-0000.log"]');
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#viewer").textContent.includes("=== attempt 1"));

  step("Resume From Step on the finished job runs it again");
  await page.selectOption("#resume-step", "write-guide");
  reason = "run the guide again";
  await page.click('button[data-action="resume_from_step"]');
  await page.waitForFunction(
    () => document.querySelectorAll('#events li[data-event="task.job.succeeded"]').length === 2
      && document.querySelector("#job-status").textContent === "succeeded",
    null, { timeout: 60000 });
  await page.waitForSelector('#events li[data-event="task.resume.from_step"]');
  await page.screenshot({ path: `${shots}/04-resumed-from-step.png`, fullPage: true });

  step("a second job, opened by keyboard, takes every other button");
  await page.focus("#status-filter");
  await tabTo(`#jobs-table button[data-open="${job2}"]`);
  await page.keyboard.press("Enter");
  await page.waitForFunction((id) => document.querySelector("#job-id").textContent === id
    && document.querySelector("#job-status").textContent === "running"
    && document.querySelectorAll('#events li[data-event="task.step.attempt.started"]').length >= 1,
    job2, { timeout: 60000 });
  const starts = () => page.evaluate(() => document.querySelectorAll('#events li[data-event="task.step.attempt.started"]').length);
  const acks = () => page.evaluate(() => document.querySelectorAll('#events li[data-event="task.control.recovery.ack"]').length);

  step("Takeover holds the job for a human, Resume releases it");
  reason = "a human looks";
  await press("takeover", "Takeover: accepted");
  await page.waitForFunction(() => document.querySelector("#live-control").textContent.includes("taken over"), null, { timeout: 15000 });
  reason = "";
  await press("resume", "Resume: accepted");
  await page.waitForFunction(() => document.querySelector("#live-control").textContent.includes("no takeover"), null, { timeout: 15000 });

  // A step recovery: accepted, acknowledged by the worker (the `acks`-th
  // acknowledgement), and followed by a new attempt of the step.
  const recover = async (action, label, why, acks) => {
    const before = await starts();
    reason = why;
    await press(action, `${label}: accepted`);
    await page.waitForFunction(([n, acks, action]) =>
      document.querySelectorAll('#events li[data-event="task.control.recovery.ack"]').length === acks
      && document.querySelectorAll('#events li[data-event="task.step.attempt.started"]').length > n
      && document.querySelector("#live-control").textContent.includes(`acknowledged: ${action}`),
      [before, acks, action], { timeout: 30000 });
  };

  step("Retry Step restarts the running step; the worker acknowledges it");
  await recover("retry_step", "Retry Step", "try again", 1);

  step("Hard Reset Step rebuilds and restarts it; the worker acknowledges it");
  await recover("hard_reset_step", "Hard Reset Step", "from the baseline", 2);
  if ((await acks()) !== 2) throw new Error("expected two acknowledged recoveries");

  step("Cancel ends the job cancelled");
  reason = "enough";
  await press("cancel", "Cancel: accepted");
  await page.waitForFunction(() => document.querySelector("#job-status").textContent === "cancelled", null, { timeout: 30000 });
  await page.waitForSelector('#events li[data-event="task.job.cancelled"]', { timeout: 15000 });
  await page.screenshot({ path: `${shots}/05-every-button.png`, fullPage: true });

  step("no page error and no console error so far");
  if (problems.length) throw new Error(problems.join("\n"));

  step("an unreachable server is reported, and the page recovers");
  await page.route("**/api/**", (route) => route.abort("connectionrefused"));
  await page.waitForFunction(() => !document.querySelector("#banner").hidden
    && document.querySelector("#banner").textContent.includes("unreachable"), null, { timeout: 15000 });
  await page.screenshot({ path: `${shots}/06-unreachable.png` });
  await page.unroute("**/api/**");
  await page.waitForFunction(() => document.querySelector("#banner").hidden, null, { timeout: 15000 });

  step("the token never went into a URL, and nothing left the server");
  const leaked = requests.filter((r) => r.includes(token));
  const foreign = requests.filter((r) => !r.startsWith(url));
  if (leaked.length || foreign.length) {
    throw new Error(`token in URLs: ${leaked.join(", ")}; other hosts: ${foreign.join(", ")}`);
  }
  if (problems.length) throw new Error(problems.join("\n"));
  step("all expectations held");
} catch (e) {
  console.error(`dashboard e2e failed: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
