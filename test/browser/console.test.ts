/**
 * The operations console in a real browser: Debian's chromium, headless, driven by playwright-core, against a whole
 * in-process system (real nats-server, every service, the simulators) and the console service. The suite signs in;
 * finds orders placed through the API on the Overview and in an order's timeline; switches a gateway outage on from
 * the console and sees the breaker open and the lag grow, then off and sees the backlog clear; poisons a message and
 * redrives it from the Dead letters page to a completed order, and discards another with a reason.
 *
 * `CONSOLE_SCREENSHOTS=<dir>` saves a PNG of each page there (docs/console.md's pictures).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { startService, type RunningService } from "../../src/lib/service.js";
import { definition as consoleService } from "../../src/services/console/service.js";
import { Streams } from "../../src/lib/events/catalog.js";
import { Hdr } from "../../src/lib/messaging/headers.js";
import { DISCARD_SUBJECT_PREFIX } from "../../src/lib/messaging/dlq.js";
import { startSystem, getJson, type System } from "../helpers/system.js";
import { authEnv, customerAuth, operatorAuth, operatorFetch } from "../helpers/auth.js";
import { theDeadLetterOf } from "../helpers/dead-letters.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
const SHOTS = process.env["CONSOLE_SCREENSHOTS"];
/** Generous: the machine may be loaded. */
const UI_TIMEOUT = 30_000;

let sys: System;
let consoleSvc: RunningService<never>;
let browser: Browser;
let jsm: JetStreamManager;

async function operatorToken(): Promise<string> {
  return (await operatorAuth()).authorization.replace(/^Bearer /, "");
}

/** A new page signed in through the `#token=` link, as `npm start` prints it. */
async function signedInPage(path = "/overview"): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT);
  await page.goto(`${consoleSvc.url}/#token=${await operatorToken()}`);
  await page.getByTestId("who").waitFor();
  if (path !== "/overview") await page.goto(`${consoleSvc.url}/#${path}`);
  return page;
}

async function shot(page: Page, name: string): Promise<void> {
  if (!SHOTS) return;
  await mkdir(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

/** The number a test id shows, once it satisfies `ok`. */
async function waitForNumber(
  page: Page,
  testId: string,
  ok: (n: number) => boolean,
  what: string,
): Promise<number> {
  const deadline = Date.now() + UI_TIMEOUT;
  let last = "";
  while (Date.now() < deadline) {
    last =
      (await page
        .getByTestId(testId)
        .textContent()
        .catch(() => null)) ?? "";
    const n = Number.parseFloat(last);
    if (Number.isFinite(n) && ok(n)) return n;
    await page.waitForTimeout(200);
  }
  assert.fail(`${what}: ${testId} shows ${JSON.stringify(last)}`);
}

async function placeOrder(customerId: string, sku = "SKU-MUG", quantity = 1): Promise<string> {
  const r = await sys.placeOrder({
    customerId,
    email: `${customerId}@example.com`,
    items: [{ sku, quantity }],
  });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body.orderId as string;
}

describe("console in a browser", { skip: !existsSync(CHROMIUM) && `no chromium at ${CHROMIUM}` }, () => {
  before(async () => {
    sys = await startSystem({
      env: { MAX_ATTEMPTS: "3", GATEWAY_RETRIES: "0", BREAKER_THRESHOLD: "3" },
      catalog: [{ sku: "SKU-MUG", name: "Mug", price: 1250, currency: "EUR", stock: 10_000 }],
    });
    jsm = await jetstreamManager(sys.nc);
    consoleSvc = (await startService(consoleService, {
      NATS_URL: sys.nats.url,
      PORT: "0",
      LOG_LEVEL: process.env["TEST_LOG_LEVEL"] ?? "silent",
      ORDERS_URL: sys.urls.orders,
      PAYMENTS_URL: sys.urls.payments,
      NOTIFICATIONS_URL: sys.urls.notifications,
      AUDIT_URL: sys.urls.audit,
      PAYMENT_GATEWAY_URL: sys.urls.gateway,
      MAIL_PROVIDER_URL: sys.urls.mail,
      CONSOLE_DEV_CONTROLS: "true",
      CONSOLE_MAX_REDRIVES: "2",
      CONSOLE_SAMPLE_MS: "500",
      ...(await authEnv()),
    })) as RunningService<never>;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
      ],
    });
  });

  after(async () => {
    await browser?.close();
    await consoleSvc?.stop();
    await sys?.stop();
  });

  test("signs in with a pasted operator token; a customer's token is refused", async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(UI_TIMEOUT);
    await page.goto(consoleSvc.url);
    await shot(page, "sign-in");
    await page.getByTestId("token-input").fill((await customerAuth("cus_browser")).authorization.slice(7));
    await page.getByTestId("sign-in").click();
    assert.match((await page.getByTestId("sign-in-error").textContent()) ?? "", /403/);
    await page.getByTestId("token-input").fill(await operatorToken());
    await page.getByTestId("sign-in").click();
    assert.equal(
      await page
        .getByTestId("who")
        .textContent()
        .then((t) => t?.trim().startsWith("operator")),
      true,
    );
    await page.getByTestId("dlq-depth").waitFor();
    await context.close();
  });

  test("orders placed through the API show on the Overview and in an order's timeline, up to its e-mail", async () => {
    const page = await signedInPage();
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await placeOrder(`cus_overview_${i}`));
    for (const id of ids) assert.equal((await sys.waitForTerminal(id)).status, "CONFIRMED");
    // Counted live from the ORDERS stream: finished orders give a POST → terminal latency.
    await waitForNumber(page, "latency-count", (n) => n >= 5, "orders finished in the last minute");
    await waitForNumber(page, "latency-p50", (n) => n >= 0, "p50 latency");
    await waitForNumber(page, "stream-ORDERS", (n) => n >= 10, "ORDERS stream size");
    await shot(page, "overview");

    // Search by customer, open the order, read its saga.
    await page.getByTestId("nav-orders").click();
    await page.getByTestId("order-query").fill("cus_overview_0");
    await page.getByTestId("order-search").click();
    await page.getByTestId("order-list").getByRole("link", { name: ids[0] }).click();
    await page.getByTestId("order-status").filter({ hasText: "CONFIRMED" }).waitFor();
    const types = [
      "OrderPlaced",
      "StockReserved",
      "PaymentCaptured",
      "OrderConfirmed",
      "StockCommitted",
      "NotificationSent",
    ];
    await page.getByTestId("timeline-type").filter({ hasText: "NotificationSent" }).waitFor();
    const shown = await page.getByTestId("timeline-type").allTextContents();
    assert.deepEqual([...shown].sort(), [...types].sort(), "every event of the saga on the timeline");
    assert.equal(await page.getByTestId("audit-verdict").textContent(), "verifies");
    // The e-mail at the provider (masked) and the capture in the gateway's ledger.
    assert.match((await page.getByTestId("mail").textContent()) ?? "", /c•••@example\.com/);
    assert.match((await page.getByTestId("ledger").textContent()) ?? "", new RegExp(ids[0]!));
    await shot(page, "order");
    await page.context().close();
  });

  test("a gateway outage switched on in the console opens the breaker and grows the lag; switched off, the backlog clears", async () => {
    const page = await signedInPage("/dev");
    // Whatever happens here, the next test finds the gateway up.
    const restore = () => sys.setGatewayFaults({ outage: false });
    try {
      await outageAndRecovery(page);
    } finally {
      await restore();
      await page.context().close();
    }
  });

  async function outageAndRecovery(page: Page): Promise<void> {
    await page.getByTestId("outage-state-payment-gateway").filter({ hasText: "up" }).waitFor();
    await page.getByTestId("outage-payment-gateway").check();
    await page.getByTestId("outage-state-payment-gateway").filter({ hasText: "OUT" }).waitFor();
    const faults = await getJson(`${sys.urls.gateway}/admin/faults`);
    assert.equal(faults.outage, true, "the switch reached the simulator");

    const ids = [];
    for (let i = 0; i < 6; i++) ids.push(await placeOrder(`cus_outage_${i}`));
    await page.getByTestId("dev-breaker-payment-gateway").filter({ hasText: "open" }).waitFor();
    await shot(page, "faults");
    await page.getByTestId("nav-overview").click();
    await page
      .getByTestId("breaker-payment-gateway")
      .filter({ hasText: /^open$|half-open/ })
      .waitFor();
    await waitForNumber(page, "lag-payments-inventory", (n) => n >= 3, "payments' lag during the outage");
    await shot(page, "overview-outage");
    for (const id of ids) assert.equal((await getJson(`${sys.urls.orders}/orders/${id}`)).status, "PENDING");

    await page.getByTestId("nav-faults").click();
    await page.getByTestId("outage-payment-gateway").uncheck();
    await page.getByTestId("outage-state-payment-gateway").filter({ hasText: "up" }).waitFor();
    await page.getByTestId("nav-overview").click();
    await page
      .getByTestId("breaker-payment-gateway")
      .filter({ hasText: /^closed$/ })
      .waitFor();
    await waitForNumber(page, "lag-payments-inventory", (n) => n === 0, "payments' backlog cleared");
    for (const id of ids) assert.equal((await sys.waitForTerminal(id)).status, "CONFIRMED");
  }

  test("a poisoned message is redriven from the Dead letters page to a completed order", async () => {
    // The poison: the gateway answers charges with the wrong amount, which payments refuses (non-retryable).
    const tamper = async (body: object) =>
      operatorFetch(`${sys.urls.gateway}/admin/tamper`, {
        method: "PUT",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    await tamper({ amountDelta: 1 });
    let orderId: string;
    try {
      orderId = await placeOrder("cus_poison");
      await theDeadLetterOf(jsm, orderId);
    } finally {
      await tamper({});
    }
    const page = await signedInPage("/dead-letters");
    page.on("dialog", (d) => void d.accept());
    const row = page.locator(`[data-testid="dead-letter"][data-order="${orderId}"]`);
    await row.waitFor();
    assert.match((await row.textContent()) ?? "", /GATEWAY_RESPONSE_MISMATCH/);
    await row.getByTestId("inspect").click();
    const body = (await page.getByTestId("inspected-body").textContent()) ?? "";
    assert.match(body, /StockReserved/);
    assert.match(
      (await page.getByTestId("attempt-history").textContent()) ?? "",
      /GATEWAY_RESPONSE_MISMATCH/,
    );
    await shot(page, "dead-letters");
    await row.getByTestId("redrive").click();
    await page.getByTestId("dlq-message").filter({ hasText: "Redriven: 1" }).waitFor();
    await row.waitFor({ state: "detached" });
    assert.equal((await sys.waitForTerminal(orderId)).status, "CONFIRMED");
    await page.goto(`${consoleSvc.url}/#/orders/${orderId}`);
    await page.getByTestId("order-status").filter({ hasText: "CONFIRMED" }).waitFor();
    await page.getByTestId("timeline-type").filter({ hasText: "NotificationSent" }).waitFor();
    await page.context().close();
  });

  test("a dead letter discarded with a reason leaves the DLQ, and the reason is recorded on the order's audit trail", async () => {
    const tamper = async (body: object) =>
      operatorFetch(`${sys.urls.gateway}/admin/tamper`, {
        method: "PUT",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    await tamper({ amountDelta: 1 });
    let orderId: string;
    let seq: number;
    try {
      orderId = await placeOrder("cus_discard");
      seq = (await theDeadLetterOf(jsm, orderId)).dlqSequence;
    } finally {
      await tamper({});
    }
    const page = await signedInPage("/dead-letters");
    const reason = "charged by hand at the bank, ticket OPS-42";
    page.on("dialog", (d) => void d.accept(reason));
    const row = page.locator(`[data-testid="dead-letter"][data-order="${orderId}"]`);
    await row.getByTestId("discard").click();
    await row.waitFor({ state: "detached" });
    // The discard record: in the DLQ stream (not a dead letter any more), with the reason and who…
    const record = await jsm.streams.getMessage(Streams.DLQ, {
      last_by_subj: `${DISCARD_SUBJECT_PREFIX}.payments-inventory`,
    });
    assert.equal(record?.header.get(Hdr.DlqDiscarded), String(seq));
    assert.equal(record?.header.get(Hdr.DlqDiscardReason), reason);
    assert.equal(record?.header.get(Hdr.DlqDiscardedBy), "operator");
    // …and on the order's audit trail: the dead letter, then its discard.
    await sys.until("the discard on the audit trail", async () => {
      const t = await getJson(`${sys.urls.audit}/audit/orders/${orderId}`);
      return (t.events as { type: string }[]).filter((e) => e.type === "DeadLetter").length === 2;
    });
    await page.context().close();
  });
  test("a durable paused by hand on the Consumers page stops pulling on every replica, and resumes", async () => {
    const page = await signedInPage("/consumers");
    page.on("dialog", (d) => void d.accept());
    const durable = "inventory-orders";
    try {
      await page.getByTestId(`pause-${durable}`).click();
      await page.getByTestId(`paused-${durable}`).filter({ hasText: "paused" }).waitFor();
      const orderId = await placeOrder("cus_paused");
      await waitForNumber(page, `lag-${durable}`, (n) => n >= 1, "the paused durable's lag");
      assert.equal((await getJson(`${sys.urls.orders}/orders/${orderId}`)).status, "PENDING", "not reserved");
      await shot(page, "consumers");
      await page.getByTestId(`resume-${durable}`).click();
      await page.getByTestId(`paused-${durable}`).filter({ hasText: "running" }).waitFor();
      assert.equal((await sys.waitForTerminal(orderId)).status, "CONFIRMED");
      await waitForNumber(page, `lag-${durable}`, (n) => n === 0, "the backlog cleared");
    } finally {
      await operatorFetch(`${consoleSvc.url}/api/consumers/ORDERS/${durable}/resume`, { method: "POST" });
      await page.context().close();
    }
  });
});
