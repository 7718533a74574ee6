/**
 * The ShopStream operations console (docs/console.md): one page app rendered with lit-html templates, charts with
 * uPlot, bundled by esbuild; hash routes #/overview, #/orders[/<id>], #/dead-letters, #/consumers, #/dev.
 */
import { html, nothing, render, type TemplateResult } from "lit";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import "./styles.css";
import { api, ApiError, follow, setToken, token, tokenFromFragment } from "./api.js";
import type { OverviewSample, Session } from "./types.js";

const root = document.getElementById("app")!;
let session: Session | null = null;
let signInError = "";
let samples: OverviewSample[] = [];
let live: AbortController | null = null;
let page: { render: () => TemplateResult } | null = null;

function route(): string {
  return location.hash.replace(/^#/, "") || "/overview";
}

function update(): void {
  render(session ? shell() : signIn(), root);
  charts.draw();
}

// ---------------------------------------------------------------------------------------------------------------
// sign-in

async function signInWith(t: string): Promise<void> {
  setToken(t.trim());
  try {
    session = await api<Session>("/api/session");
    signInError = "";
    startLive();
    await navigate();
  } catch (err) {
    setToken(null);
    session = null;
    signInError = err instanceof ApiError ? err.message : String(err);
    update();
  }
}

function signIn(): TemplateResult {
  const submit = (e: Event) => {
    e.preventDefault();
    const t = (document.getElementById("token") as HTMLTextAreaElement).value;
    void signInWith(t);
  };
  return html`<div class="signin card">
    <h2>ShopStream console</h2>
    <p class="muted">
      Paste an operator token (<span class="mono">npm run -s token -- --admin</span>), or open the link
      <span class="mono">npm start</span> prints.
    </p>
    <form @submit=${submit}>
      <textarea id="token" data-testid="token-input" placeholder="eyJhbGciOi…"></textarea>
      <p><button type="submit" data-testid="sign-in">Sign in</button></p>
      ${signInError ? html`<p class="error" data-testid="sign-in-error">${signInError}</p>` : nothing}
    </form>
  </div>`;
}

function shell(): TemplateResult {
  const r = route();
  const link = (href: string, label: string) =>
    html`<a
      href="#${href}"
      class=${r.startsWith(href) ? "active" : ""}
      data-testid="nav-${label.toLowerCase().replace(/ /g, "-")}"
      >${label}</a
    >`;
  return html`<header>
      <h1>ShopStream console</h1>
      <nav>
        ${link("/overview", "Overview")} ${link("/orders", "Orders")} ${link("/dead-letters", "Dead letters")}
        ${link("/consumers", "Consumers")} ${session?.devControls ? link("/dev", "Faults") : nothing}
      </nav>
      <span class="who" data-testid="who"
        >${session?.sub} <button class="secondary" @click=${signOut}>Sign out</button></span
      >
    </header>
    <main>${page ? page.render() : html`<p class="muted">Loading…</p>`}</main>`;
}

function signOut(): void {
  setToken(null);
  session = null;
  live?.abort();
  live = null;
  update();
}

// ---------------------------------------------------------------------------------------------------------------
// overview (live)

function startLive(): void {
  live?.abort();
  live = new AbortController();
  samples = [];
  void follow(
    "/api/overview/stream",
    (data) => {
      samples.push(JSON.parse(data) as OverviewSample);
      if (samples.length > 300) samples.shift();
      if (["/overview", "/consumers", "/dev"].some((r) => route().startsWith(r))) update();
    },
    live.signal,
  );
}

const fmt = (n: number | null | undefined, unit = "") =>
  n === null || n === undefined ? "–" : `${n}${unit}`;
const eta = (s: number | null) => (s === null ? "∞ (not draining)" : s === 0 ? "clear" : `${s} s`);

const charts = {
  plots: new Map<string, uPlot>(),
  draw(): void {
    for (const [id, p] of this.plots) {
      if (!document.getElementById(id)?.contains(p.root)) {
        p.destroy();
        this.plots.delete(id);
      }
    }
    if (!route().startsWith("/overview") || samples.length === 0) return;
    const xs = samples.map((s) => Date.parse(s.at) / 1000);
    this.plot(
      "chart-rates",
      "orders / s",
      ["placed", "confirmed", "cancelled"],
      ["#2458d6", "#1f8a4c", "#c53030"],
      [
        xs,
        samples.map((s) => s.rates.placed),
        samples.map((s) => s.rates.confirmed),
        samples.map((s) => s.rates.cancelled),
      ],
    );
    this.plot(
      "chart-lag",
      "messages",
      ["total lag", "DLQ depth"],
      ["#b7791f", "#c53030"],
      [xs, samples.map((s) => s.consumers.reduce((a, c) => a + c.lag, 0)), samples.map((s) => s.dlqDepth)],
    );
  },
  plot(id: string, unit: string, names: string[], colours: string[], data: number[][]): void {
    const el = document.getElementById(id);
    if (!el) return;
    let p = this.plots.get(id);
    if (!p) {
      p = new uPlot(
        {
          width: Math.max(300, el.clientWidth - 10),
          height: 180,
          axes: [{}, { label: unit }],
          series: [{}, ...names.map((label, i) => ({ label, stroke: colours[i]!, width: 2 }))],
        },
        data as uPlot.AlignedData,
        el,
      );
      this.plots.set(id, p);
    } else p.setData(data as uPlot.AlignedData);
  },
};

const overviewPage = {
  render(): TemplateResult {
    const s = samples[samples.length - 1];
    if (!s) return html`<p class="muted">Waiting for the first sample…</p>`;
    const lag = s.consumers.reduce((a, c) => a + c.lag, 0);
    const card = (label: string, value: string, testid: string) =>
      html`<div class="card">
        <div class="label">${label}</div>
        <div class="value" data-testid=${testid}>${value}</div>
      </div>`;
    return html`<div class="cards">
        ${card("placed / s", fmt(s.rates.placed), "rate-placed")}
        ${card("confirmed / s", fmt(s.rates.confirmed), "rate-confirmed")}
        ${card("cancelled / s", fmt(s.rates.cancelled), "rate-cancelled")}
        ${card("POST → terminal p50", fmt(s.latency.p50, " ms"), "latency-p50")}
        ${card("p99", fmt(s.latency.p99, " ms"), "latency-p99")}
        ${card("finished (1 min)", fmt(s.latency.count), "latency-count")}
        ${card("total lag", String(lag), "total-lag")} ${card("DLQ depth", String(s.dlqDepth), "dlq-depth")}
      </div>
      <div class="grid2">
        <section>
          <h2>Orders per second</h2>
          <div id="chart-rates"></div>
        </section>
        <section>
          <h2>Lag and dead letters</h2>
          <div id="chart-lag"></div>
        </section>
      </div>
      <div class="grid2">
        <section>
          <h2>Circuit breakers</h2>
          <table>
            <tr>
              <th>dependency</th>
              <th>client</th>
              <th>state</th>
            </tr>
            ${s.breakers.map(
              (b) =>
                html`<tr>
                  <td>${b.dependency}</td>
                  <td>${b.service}</td>
                  <td class="state-${b.state}" data-testid="breaker-${b.dependency}">${b.state}</td>
                </tr>`,
            )}
          </table>
        </section>
        <section>
          <h2>Streams</h2>
          <table>
            <tr>
              <th>stream</th>
              <th>messages</th>
              <th>bytes</th>
            </tr>
            ${s.streams.map(
              (st) =>
                html`<tr>
                  <td>${st.name}</td>
                  <td data-testid="stream-${st.name}">${st.messages}</td>
                  <td>${st.bytes}</td>
                </tr>`,
            )}
          </table>
        </section>
      </div>
      <section>
        <h2>Consumer lag</h2>
        ${consumerTable(s, false)}
      </section>`;
  },
};

function consumerTable(s: OverviewSample, controls: boolean): TemplateResult {
  return html`<table data-testid="consumers">
    <tr>
      <th>durable</th>
      <th>stream</th>
      <th>pending</th>
      <th>ack pending</th>
      <th>lag</th>
      <th>acks / s</th>
      <th>time to clear</th>
      <th>redelivered</th>
      ${
        controls
          ? html`<th>paused</th>
              <th></th>`
          : nothing
      }
    </tr>
    ${s.consumers.map(
      (c) =>
        html`<tr data-testid="consumer-${c.durable}">
          <td>${c.durable}</td>
          <td>${c.stream}</td>
          <td>${c.pending}</td>
          <td>${c.ackPending}</td>
          <td data-testid="lag-${c.durable}">${c.lag}</td>
          <td>${c.ackRate}</td>
          <td>${eta(c.etaSeconds)}</td>
          <td>${c.redelivered}</td>
          ${
            controls
              ? html`<td data-testid="paused-${c.durable}">
                    ${
                      c.paused
                        ? html`<span class="warn">paused</span> <span class="muted">by ${c.paused.by}</span>`
                        : "running"
                    }
                  </td>
                  <td>
                    ${
                      c.paused
                        ? html`<button
                            data-testid="resume-${c.durable}"
                            @click=${() => void setPaused(c.stream, c.durable, false)}
                          >
                            Resume
                          </button>`
                        : html`<button
                            class="secondary"
                            data-testid="pause-${c.durable}"
                            @click=${() => void setPaused(c.stream, c.durable, true)}
                          >
                            Pause
                          </button>`
                    }
                  </td>`
              : nothing
          }
        </tr>`,
    )}
  </table>`;
}

// ---------------------------------------------------------------------------------------------------------------
// orders

interface Part {
  ok: boolean;
  status: number;
  body?: unknown;
  error?: string;
}
interface OrderDetail {
  orderId: string;
  order: Part;
  timeline: Part;
  payment: Part;
  notification: Part;
  ledger: Part;
  mail: Part;
  verify: Part;
}
interface TimelineRow {
  position: number;
  service: string | null;
  type: string;
  timestamp: string;
  trace_id: string | null;
  delayMs: number | null;
  cause: string | null;
}

function ordersPage(orderId: string | undefined) {
  let list: { orderId: string; status: string; total: number; createdAt?: string }[] | null = null;
  let detail: OrderDetail | null = null;
  let error = "";
  let customer = "";
  const load = async () => {
    if (!orderId) return;
    try {
      detail = await api<OrderDetail>(`/api/orders/${encodeURIComponent(orderId)}`);
      error = "";
    } catch (err) {
      error = String(err instanceof Error ? err.message : err);
    }
    update();
  };
  const search = (e: Event) => {
    e.preventDefault();
    const q = (document.getElementById("order-query") as HTMLInputElement).value.trim();
    if (/^ord_/.test(q)) {
      location.hash = `#/orders/${q}`;
      return;
    }
    customer = q;
    void api<{ orders: typeof list }>(`/api/orders?customerId=${encodeURIComponent(q)}`).then(
      (r) => {
        list = r.orders;
        error = "";
        update();
      },
      (err: unknown) => {
        error = String(err instanceof Error ? err.message : err);
        update();
      },
    );
  };
  void load();
  const timer = orderId ? setInterval(() => void load(), 2000) : undefined;
  const partView = (title: string, p: Part | undefined, testid: string) =>
    html`<section>
      <h2>${title}</h2>
      ${
        !p
          ? nothing
          : p.ok
            ? html`<pre data-testid=${testid}>${JSON.stringify(p.body, null, 2)}</pre>`
            : html`<p class="muted" data-testid=${testid}>
                ${p.status === 404 ? "none yet" : `unavailable: ${p.error}`}
              </p>`
      }
    </section>`;
  return {
    stop: () => clearInterval(timer),
    render(): TemplateResult {
      const status = detail?.order.ok ? (detail.order.body as { status?: string }).status : undefined;
      const events = detail?.timeline.ok ? (detail.timeline.body as { events: TimelineRow[] }).events : [];
      const verify = detail?.verify.ok ? (detail.verify.body as { ok: boolean; rows: number }) : undefined;
      return html`<form class="filters" @submit=${search}>
          <label
            >Order id or customer id
            <input id="order-query" data-testid="order-query" size="40" .value=${orderId ?? customer}
          /></label>
          <button type="submit" data-testid="order-search">Search</button>
        </form>
        ${error ? html`<p class="error" data-testid="orders-error">${error}</p>` : nothing}
        ${
          list
            ? html`<section>
                <h2>Orders of ${customer}</h2>
                <table data-testid="order-list">
                  <tr>
                    <th>order</th>
                    <th>status</th>
                    <th>total</th>
                  </tr>
                  ${list.map(
                    (o) =>
                      html`<tr>
                        <td><a href="#/orders/${o.orderId}">${o.orderId}</a></td>
                        <td>${o.status}</td>
                        <td>${o.total}</td>
                      </tr>`,
                  )}
                </table>
              </section>`
            : nothing
        }
        ${
          detail
            ? html`<section>
                  <h2>
                    Order <span class="mono">${detail.orderId}</span>:
                    <span
                      data-testid="order-status"
                      class=${status === "CONFIRMED" ? "ok" : status === "CANCELLED" ? "bad" : "warn"}
                      >${status ?? "unknown"}</span
                    >
                  </h2>
                  <p>
                    Audit chain:
                    ${
                      verify
                        ? html`<span data-testid="audit-verdict" class=${verify.ok ? "ok" : "bad"}
                              >${verify.ok ? "verifies" : "BROKEN"}</span
                            >
                            <span class="muted"
                              >(${verify.rows} rows; this order has ${events.length} on it)</span
                            >`
                        : html`<span class="muted">unavailable</span>`
                    }
                  </p>
                </section>
                <section>
                  <h2>Saga timeline</h2>
                  <table data-testid="timeline">
                    <tr>
                      <th>#</th>
                      <th>event</th>
                      <th>service</th>
                      <th>time</th>
                      <th>delay</th>
                      <th>caused by</th>
                      <th>trace</th>
                    </tr>
                    ${events.map(
                      (e) =>
                        html`<tr data-testid="timeline-row">
                          <td>${e.position}</td>
                          <td data-testid="timeline-type">${e.type}</td>
                          <td>${e.service ?? "–"}</td>
                          <td class="mono">${e.timestamp}</td>
                          <td>${e.delayMs === null ? "–" : `+${e.delayMs} ms`}</td>
                          <td>${e.cause ?? "–"}</td>
                          <td class="mono">${e.trace_id ?? "–"}</td>
                        </tr>`,
                    )}
                  </table>
                </section>
                <div class="grid2">
                  ${partView("Payment (payments service)", detail.payment, "payment")}
                  ${partView("Gateway ledger", detail.ledger, "ledger")}
                  ${partView("E-mail (notifications service)", detail.notification, "notification")}
                  ${partView("Sent mail (provider, masked)", detail.mail, "mail")}
                </div>`
            : orderId && !error
              ? html`<p class="muted">Loading…</p>`
              : nothing
        }`;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// dead letters

interface DeadLetterView {
  dlqSequence: number;
  consumer: string;
  code: string;
  error: string;
  attempts: number;
  stream: string;
  subject: string;
  sequence: number;
  at: string;
  type?: string;
  orderId: string | null;
  redrives: number;
  history: { at: string; consumer: string; code: string; attempts: number; error: string }[];
  masked: boolean;
  event?: unknown;
  bodyText?: string;
  headers: Record<string, string>;
}

function deadLettersPage() {
  let rows: DeadLetterView[] = [];
  let total = 0;
  let maxRedrives = session?.maxRedrives ?? 3;
  const selected = new Set<number>();
  let inspected: DeadLetterView | null = null;
  let message = "";
  let filters: Record<string, string> = {};
  const load = async () => {
    const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v !== ""));
    try {
      const r = await api<{ total: number; deadLetters: DeadLetterView[]; maxRedrives: number }>(
        `/api/dead-letters?${q}`,
      );
      rows = r.deadLetters;
      total = r.total;
      maxRedrives = r.maxRedrives;
      for (const s of [...selected]) if (!rows.some((x) => x.dlqSequence === s)) selected.delete(s);
    } catch (err) {
      message = String(err instanceof Error ? err.message : err);
    }
    update();
  };
  const applyFilters = (e: Event) => {
    e.preventDefault();
    const form = e.target as HTMLFormElement;
    const data = new FormData(form);
    filters = {};
    for (const [k, v] of data.entries()) {
      const s = typeof v === "string" ? v : "";
      if (!s) continue;
      filters[k] = k === "since" || k === "until" ? new Date(s).toISOString() : s;
    }
    void load();
  };
  const inspect = async (seq: number, unmask = false) => {
    try {
      inspected = await api<DeadLetterView>(`/api/dead-letters/${seq}${unmask ? "?unmask=true" : ""}`);
    } catch (err) {
      message = String(err instanceof Error ? err.message : err);
    }
    update();
  };
  const redrive = async (seqs: number[]) => {
    if (seqs.length === 0) return;
    if (!confirm(`Redrive ${seqs.length} dead letter(s) to their original subjects?`)) return;
    const r = await api<{ results: { seq: number; ok: boolean; error?: string; redrives?: number }[] }>(
      "/api/dead-letters/redrive",
      { method: "POST", body: { seqs, confirm: true } },
    );
    const okCount = r.results.filter((x) => x.ok).length;
    const failed = r.results.filter((x) => !x.ok).map((x) => `${x.seq}: ${x.error}`);
    message = `Redriven: ${okCount}${failed.length ? `; not redriven: ${failed.join("; ")}` : ""}`;
    selected.clear();
    inspected = null;
    await load();
  };
  const discard = async (seq: number) => {
    const reason = prompt(`Why discard dead letter ${seq}? (recorded on the audit trail)`);
    if (!reason || reason.trim().length < 3) return;
    try {
      await api(`/api/dead-letters/${seq}/discard`, { method: "POST", body: { reason } });
      message = `Discarded ${seq}`;
      inspected = null;
    } catch (err) {
      message = String(err instanceof Error ? err.message : err);
    }
    await load();
  };
  void load();
  const timer = setInterval(() => void load(), 3000);
  return {
    stop: () => clearInterval(timer),
    render(): TemplateResult {
      return html`<form class="filters" @submit=${applyFilters}>
          <label
            >stream
            <select name="stream">
              <option value="">any</option>
              ${["ORDERS", "INVENTORY", "PAYMENTS", "NOTIFICATIONS"].map((s) => html`<option>${s}</option>`)}
            </select></label
          >
          <label>type <input name="type" size="16" /></label>
          <label>consumer <input name="consumer" size="18" /></label>
          <label>error <input name="error" size="18" data-testid="filter-error" /></label>
          <label>since <input name="since" type="datetime-local" /></label>
          <label>until <input name="until" type="datetime-local" /></label>
          <button type="submit" data-testid="apply-filters">Filter</button>
        </form>
        ${message ? html`<p data-testid="dlq-message">${message}</p>` : nothing}
        <section>
          <h2>
            Dead letters (${rows.length} shown of ${total}); a message may be redriven ${maxRedrives} times
          </h2>
          <p>
            <button
              data-testid="redrive-selected"
              ?disabled=${selected.size === 0}
              @click=${() => void redrive([...selected])}
            >
              Redrive selected (${selected.size})
            </button>
          </p>
          <table data-testid="dead-letters">
            <tr>
              <th></th>
              <th>seq</th>
              <th>at</th>
              <th>consumer</th>
              <th>type</th>
              <th>order</th>
              <th>code</th>
              <th>attempts</th>
              <th>redrives</th>
              <th>error</th>
              <th></th>
            </tr>
            ${rows.map(
              (r) =>
                html`<tr data-testid="dead-letter" data-seq=${r.dlqSequence} data-order=${r.orderId ?? ""}>
                  <td>
                    <input
                      type="checkbox"
                      .checked=${selected.has(r.dlqSequence)}
                      @change=${(e: Event) => {
                        if ((e.target as HTMLInputElement).checked) selected.add(r.dlqSequence);
                        else selected.delete(r.dlqSequence);
                        update();
                      }}
                    />
                  </td>
                  <td>${r.dlqSequence}</td>
                  <td class="mono">${r.at}</td>
                  <td>${r.consumer}</td>
                  <td>${r.type ?? "–"}</td>
                  <td>${r.orderId ? html`<a href="#/orders/${r.orderId}">${r.orderId}</a>` : "–"}</td>
                  <td>${r.code}</td>
                  <td>${r.attempts}</td>
                  <td>${r.redrives}</td>
                  <td>${r.error}</td>
                  <td>
                    <button
                      class="secondary"
                      data-testid="inspect"
                      @click=${() => void inspect(r.dlqSequence)}
                    >
                      Inspect
                    </button>
                    <button
                      data-testid="redrive"
                      ?disabled=${r.redrives >= maxRedrives}
                      @click=${() => void redrive([r.dlqSequence])}
                    >
                      Redrive
                    </button>
                    <button class="danger" data-testid="discard" @click=${() => void discard(r.dlqSequence)}>
                      Discard
                    </button>
                  </td>
                </tr>`,
            )}
          </table>
        </section>
        ${
          inspected
            ? html`<section data-testid="inspected">
                <h2>
                  Dead letter ${inspected.dlqSequence}
                  ${inspected.masked ? html`<span class="muted">(personal data masked)</span>` : html`<span class="warn">(unmasked)</span>`}
                  ${inspected.masked ? html`<button class="secondary" @click=${() => void inspect(inspected!.dlqSequence, true)}>Unmask</button>` : nothing}
                </h2>
                <p>
                  From
                  <span class="mono">${inspected.stream}#${inspected.sequence}</span> (${inspected.subject}),
                  consumer ${inspected.consumer}.
                </p>
                <h3>Attempt history</h3>
                <table data-testid="attempt-history">
                  <tr>
                    <th>dead-lettered at</th>
                    <th>consumer</th>
                    <th>code</th>
                    <th>attempts</th>
                    <th>error</th>
                  </tr>
                  ${[
                    ...inspected.history,
                    {
                      at: inspected.at,
                      consumer: inspected.consumer,
                      code: inspected.code,
                      attempts: inspected.attempts,
                      error: inspected.error,
                    },
                  ].map(
                    (h) =>
                      html`<tr>
                        <td class="mono">${h.at}</td>
                        <td>${h.consumer}</td>
                        <td>${h.code}</td>
                        <td>${h.attempts}</td>
                        <td>${h.error}</td>
                      </tr>`,
                  )}
                </table>
                <h3>Event</h3>
                <pre data-testid="inspected-body">
${inspected.event !== undefined ? JSON.stringify(inspected.event, null, 2) : (inspected.bodyText ?? "(no body)")}</pre>
              </section>`
            : nothing
        }`;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// consumers, faults

async function setPaused(stream: string, durable: string, paused: boolean): Promise<void> {
  if (paused && !confirm(`Pause ${durable}? Every replica stops pulling; its messages wait in ${stream}.`))
    return;
  try {
    await api(`/api/consumers/${stream}/${durable}/${paused ? "pause" : "resume"}`, { method: "POST" });
  } catch (err) {
    alert(String(err instanceof Error ? err.message : err));
  }
}

const consumersPage = {
  render(): TemplateResult {
    const s = samples[samples.length - 1];
    return html`<section>
      <h2>Durable consumers</h2>
      ${s ? consumerTable(s, true) : html`<p class="muted">Waiting for the first sample…</p>`}
    </section>`;
  },
};

function devPage() {
  const sims = ["payment-gateway", "mail-provider"] as const;
  const faults: Record<string, { outage: boolean; failureRate: number; latencyMs: number } | undefined> = {};
  let error = "";
  const load = async () => {
    try {
      for (const s of sims) faults[s] = await api(`/api/dev/faults/${s}`);
    } catch (err) {
      error = String(err instanceof Error ? err.message : err);
    }
    update();
  };
  const put = async (sim: string, patch: Record<string, unknown>) => {
    try {
      faults[sim] = await api(`/api/dev/faults/${sim}`, { method: "PUT", body: patch });
      error = "";
    } catch (err) {
      error = String(err instanceof Error ? err.message : err);
    }
    update();
  };
  void load();
  return {
    stop: () => undefined,
    render(): TemplateResult {
      const s = samples[samples.length - 1];
      return html`<p class="muted">
          Development only: switch the simulated outside world into an outage, then watch the breaker open,
          payments pause and orders queue on the Overview; switch it back and watch the backlog clear.
        </p>
        ${error ? html`<p class="error">${error}</p>` : nothing}
        ${sims.map((sim) => {
          const f = faults[sim];
          const breaker = s?.breakers.find((b) => b.dependency === sim)?.state ?? "unknown";
          return html`<section>
            <h2>
              ${sim} <span class="state-${breaker}" data-testid="dev-breaker-${sim}">breaker ${breaker}</span>
            </h2>
            ${
              f
                ? html`<div class="switch">
                    <label
                      ><input
                        type="checkbox"
                        data-testid="outage-${sim}"
                        .checked=${f.outage}
                        @change=${(e: Event) => void put(sim, { outage: (e.target as HTMLInputElement).checked })}
                      />
                      outage</label
                    >
                    <label
                      >failure rate
                      <input
                        type="number"
                        min="0"
                        max="1"
                        step="0.1"
                        .value=${String(f.failureRate)}
                        @change=${(e: Event) => void put(sim, { failureRate: Number((e.target as HTMLInputElement).value) })}
                    /></label>
                    <label
                      >latency (ms)
                      <input
                        type="number"
                        min="0"
                        step="50"
                        .value=${String(f.latencyMs)}
                        @change=${(e: Event) => void put(sim, { latencyMs: Number((e.target as HTMLInputElement).value) })}
                    /></label>
                    <span data-testid="outage-state-${sim}">${f.outage ? "OUT" : "up"}</span>
                  </div>`
                : html`<p class="muted">Loading…</p>`
            }
          </section>`;
        })}`;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// routing

let current: { stop?: () => void; render: () => TemplateResult } | null = null;

async function navigate(): Promise<void> {
  if (!session) return update();
  current?.stop?.();
  const r = route();
  if (r.startsWith("/orders")) current = ordersPage(r.split("/")[2] || undefined);
  else if (r.startsWith("/dead-letters")) current = deadLettersPage();
  else if (r.startsWith("/consumers")) current = consumersPage;
  else if (r.startsWith("/dev") && session.devControls) current = devPage();
  else current = overviewPage;
  page = current;
  update();
}

window.addEventListener("hashchange", () => void navigate());
tokenFromFragment();
const existing = token();
if (existing) void signInWith(existing);
else update();
