/**
 * The processes of the local stack (`npm start`), in one table: what each one is, where its entry point lives in
 * development (`.ts`, run with tsx) and production (`dist/…/main.js`, built by `npm run build`), its port and how
 * the stack knows it is ready.
 *
 * Pure data and pure functions: the supervisor ({@link ./supervisor.ts}) reads the environment and does the I/O.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { devSecretPath } from "../lib/http/dev-token.js";
import { defaultPorts, type ProcessName } from "../lib/ports.js";

/** A simulator of the outside world (readiness = `/health`) or a ShopStream service (readiness = `/ready`). */
export type ProcessKind = "simulator" | "service";

/** One row of {@link stackProcesses}. */
export interface StackProcess {
  /** The one name of the process: folder, `service` log field, metric label. */
  readonly name: ProcessName;
  readonly kind: ProcessKind;
  /**
   * Start tier: a tier is started once every process of the previous tier is ready, and tiers stop in reverse.
   * Simulators first, then the services that consume events, then orders, which opens the front door last and
   * closes it first.
   */
  readonly tier: 0 | 1 | 2;
  /** What it does, for the summary table. */
  readonly role: string;
  /** Entry point in development mode, relative to the repository root. */
  readonly source: string;
  /** Entry point in production mode (`STACK_MODE=production`), relative to the repository root. */
  readonly compiled: string;
  /** Environment variable of the stack that overrides {@link defaultPort}. */
  readonly portEnv: string;
  readonly defaultPort: number;
  /** Path that answers 200 once the process can do its job. */
  readonly readyPath: "/ready" | "/health";
  /** Whether it serves Prometheus `/metrics`. */
  readonly metrics: boolean;
}

/** Every process of the stack, in start order. Each must have its entry point: a missing one stops the stack. */
export const stackProcesses: readonly StackProcess[] = [
  {
    name: "payment-gateway",
    kind: "simulator",
    tier: 0,
    role: "payment gateway simulator",
    source: "src/simulators/payment-gateway/main.ts",
    compiled: "dist/simulators/payment-gateway/main.js",
    portEnv: "PAYMENT_GATEWAY_PORT",
    defaultPort: defaultPorts["payment-gateway"],
    readyPath: "/health",
    metrics: false,
  },
  {
    name: "mail-provider",
    kind: "simulator",
    tier: 0,
    role: "mail provider simulator",
    source: "src/simulators/mail-provider/main.ts",
    compiled: "dist/simulators/mail-provider/main.js",
    portEnv: "MAIL_PROVIDER_PORT",
    defaultPort: defaultPorts["mail-provider"],
    readyPath: "/health",
    metrics: false,
  },
  {
    name: "inventory",
    kind: "service",
    tier: 1,
    role: "stock and reservations",
    source: "src/services/inventory/main.ts",
    compiled: "dist/services/inventory/main.js",
    portEnv: "INVENTORY_PORT",
    defaultPort: defaultPorts.inventory,
    readyPath: "/ready",
    metrics: true,
  },
  {
    name: "payments",
    kind: "service",
    tier: 1,
    role: "charges and refunds",
    source: "src/services/payments/main.ts",
    compiled: "dist/services/payments/main.js",
    portEnv: "PAYMENTS_PORT",
    defaultPort: defaultPorts.payments,
    readyPath: "/ready",
    metrics: true,
  },
  {
    name: "notifications",
    kind: "service",
    tier: 1,
    role: "customer e-mails",
    source: "src/services/notifications/main.ts",
    compiled: "dist/services/notifications/main.js",
    portEnv: "NOTIFICATIONS_PORT",
    defaultPort: defaultPorts.notifications,
    readyPath: "/ready",
    metrics: true,
  },
  {
    name: "audit",
    kind: "service",
    tier: 1,
    role: "hash-chained audit log",
    source: "src/services/audit/main.ts",
    compiled: "dist/services/audit/main.js",
    portEnv: "AUDIT_PORT",
    defaultPort: defaultPorts.audit,
    readyPath: "/ready",
    metrics: true,
  },
  {
    name: "console",
    kind: "service",
    tier: 1,
    role: "operations console (web UI)",
    source: "src/services/console/main.ts",
    compiled: "dist/services/console/main.js",
    portEnv: "CONSOLE_PORT",
    defaultPort: defaultPorts.console,
    readyPath: "/ready",
    metrics: true,
  },
  {
    name: "orders",
    kind: "service",
    tier: 2,
    role: "public order API",
    source: "src/services/orders/main.ts",
    compiled: "dist/services/orders/main.js",
    portEnv: "ORDERS_PORT",
    defaultPort: defaultPorts.orders,
    readyPath: "/ready",
    metrics: true,
  },
];

/** The row of {@link stackProcesses} named `name`. */
export function processNamed(name: ProcessName): StackProcess {
  const p = stackProcesses.find((q) => q.name === name);
  if (p === undefined) throw new RangeError(`no stack process ${name}`);
  return p;
}

/** `dev` runs the `.ts` sources through tsx; `production` runs what `npm run build` compiled into `dist/`. */
export type StackMode = "dev" | "production";

/** Where a process's entry point is, or why it cannot be started (both failures are errors). */
export type EntryPoint =
  | { status: "ok"; file: string }
  | { status: "missing"; reason: string }
  | { status: "not-built"; reason: string };

/**
 * The absolute entry point of `p` under `root` in `mode`.
 *
 * `missing`: the entry point does not exist (the reason names the file): the stack refuses to start, since a system
 * without one of its processes would accept orders it can never finish. `not-built`: in production mode the source
 * exists but `dist/` lacks it: `npm run build` is stale.
 */
export function resolveEntryPoint(
  p: StackProcess,
  root: string,
  mode: StackMode,
  exists: (path: string) => boolean = existsSync,
): EntryPoint {
  const source = join(root, p.source);
  if (mode === "dev") {
    return exists(source)
      ? { status: "ok", file: source }
      : { status: "missing", reason: `${p.source} not found` };
  }
  const compiled = join(root, p.compiled);
  if (exists(compiled)) return { status: "ok", file: compiled };
  if (exists(source)) {
    return { status: "not-built", reason: `${p.compiled} not found: run \`npm run build\` first` };
  }
  return { status: "missing", reason: `${p.compiled} (and ${p.source}) not found` };
}

/**
 * The Node.js arguments that run `entry`: `--import <tsx loader>` for a `.ts` file, source maps for compiled
 * JavaScript. `tsxLoader` gives an absolute URL, so children do not depend on their working directory to find tsx;
 * it is called only for a `.ts` entry (production installs may lack tsx).
 */
export function nodeArgs(entry: string, tsxLoader: () => string): string[] {
  return entry.endsWith(".ts") ? ["--import", tsxLoader(), entry] : ["--enable-source-maps", entry];
}

/** What {@link childEnv} needs to know about the running stack. */
export interface ChildEnvInput {
  /** The stack's own environment, passed on whole. */
  parent: NodeJS.ProcessEnv;
  name: ProcessName;
  port: number;
  natsUrl: string;
  logLevel: string;
  /** The stack's absolute data directory; each process gets its own folder in it. */
  dataDir: string;
  paymentGatewayUrl: string;
  mailProviderUrl: string;
  /** Base URLs of the services, for the console (`ORDERS_URL`, `AUDIT_URL`, …). */
  serviceUrls?: Partial<Record<ProcessName, string>>;
  /** The process's NATS credential variables (`NATS_USER`, `NATS_PASSWORD_FILE`) when NATS authentication is on. */
  nats?: Record<string, string>;
}

/**
 * The environment of one child: everything in the stack's environment, overridden by what the stack decides
 * (`PORT`, `NATS_URL`, `LOG_LEVEL`, the simulator URLs and files, and `DATA_DIR` = `<stack data dir>/<name>`, so no
 * two processes share a folder), and with NATS authentication the service's own `NATS_USER` and
 * `NATS_PASSWORD_FILE`. `DATABASE_URL` passes through when set. The console also gets the services' URLs
 * (`ORDERS_URL`, `PAYMENTS_URL`, `NOTIFICATIONS_URL`, `AUDIT_URL`) and its development fault switches.
 */
export function childEnv(input: ChildEnvInput): NodeJS.ProcessEnv {
  const urls = input.serviceUrls ?? {};
  const consoleEnv: Record<string, string> = {};
  if (input.name === "console") {
    for (const name of ["orders", "payments", "notifications", "audit"] as const) {
      const url = urls[name];
      if (url !== undefined) consoleEnv[`${name.toUpperCase()}_URL`] = url;
    }
    consoleEnv["CONSOLE_DEV_CONTROLS"] = input.parent["CONSOLE_DEV_CONTROLS"] ?? "true";
  }
  return {
    ...input.parent,
    PORT: String(input.port),
    NATS_URL: input.natsUrl,
    LOG_LEVEL: input.logLevel,
    DATA_DIR: join(input.dataDir, input.name),
    PAYMENT_GATEWAY_URL: input.paymentGatewayUrl,
    MAIL_PROVIDER_URL: input.mailProviderUrl,
    LEDGER_FILE: join(input.dataDir, "payment-gateway", "ledger.json"),
    MAIL_LOG_FILE: join(input.dataDir, "mail-provider", "messages.json"),
    // The development token secret, shared by every process (created by the stack first: ensureDevSecret). A
    // configured AUTH_JWKS_URL or AUTH_PUBLIC_KEY takes precedence over it (src/lib/http/auth.ts).
    AUTH_HS256_SECRET_FILE: input.parent["AUTH_HS256_SECRET_FILE"] ?? devSecretPath(input.dataDir),
    ...consoleEnv,
    ...input.nats,
  };
}

/** Two processes configured on one port, as `[first, second, port]`. */
export function duplicatePorts(
  ports: readonly { name: string; portEnv: string; port: number }[],
): [string, string, number][] {
  const seen = new Map<number, string>();
  const dups: [string, string, number][] = [];
  for (const p of ports) {
    const first = seen.get(p.port);
    if (first === undefined) seen.set(p.port, `${p.name} (${p.portEnv})`);
    else dups.push([first, `${p.name} (${p.portEnv})`, p.port]);
  }
  return dups;
}
