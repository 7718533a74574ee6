/**
 * NATS users and their permissions, derived from the declared topology: the one place that says which service may
 * publish, read, pull and acknowledge what. `npm start` writes the nats-server configuration from it
 * ({@link renderNatsConfig}), the hostile tests run a server with it, and docs/security-nats.md's matrix is generated
 * from it ({@link permissionMatrix}; a test keeps the document in step).
 *
 * Principles (issue 11, part 3):
 * - a service publishes only its own event subjects (the catalog's types of the stream it owns), the DLQ subjects of
 *   its own durables, and the JetStream API calls it needs, pinned to its own streams, durables and KV buckets;
 * - it subscribes only to its own inbox prefix (`_INBOX_<user>`: nats.js `inboxPrefix`) and the core subjects it
 *   really follows;
 * - stream and consumer administration (create, update, delete, purge) is denied to it: provisioning runs with the
 *   `admin` user (`npm run provision`);
 * - `operator` (DLQ tool, console, checker, bench and chaos reads) reads everything, redrives and discards dead
 *   letters, and administers nothing.
 */
import { catalog, eventTypes, Streams, type StreamName } from "../events/catalog.js";
import { Durables } from "../events/consumers.js";
import { subjectOf } from "../events/envelope.js";
import { DISCARD_SUBJECT_PREFIX, DLQ_SUBJECT_PREFIX } from "./dlq.js";
import { CONSUMER_CONTROL_BUCKET } from "./consumer-control.js";

/** The five services, each its own NATS user. */
export const SERVICE_USERS = ["orders", "inventory", "payments", "notifications", "audit"] as const;
export type ServiceUser = (typeof SERVICE_USERS)[number];
/**
 * Every NATS user ShopStream uses: the services, `admin` (provisioning), `operator` (tools) and `console` (the
 * operations console: the operator's rights on its own user, so its connections and inbox are told apart).
 */
export const NATS_USERS = [...SERVICE_USERS, "admin", "operator", "console"] as const;
export type NatsUser = (typeof NATS_USERS)[number];

/** A durable consumer a service pulls from. */
export interface DurableRef {
  stream: StreamName;
  durable: string;
}

/** A KV bucket a service uses: `write` allows puts/creates/updates; every bucket may be read and watched. */
export interface BucketUse {
  bucket: string;
  write: boolean;
}

/** What one service touches on NATS; everything else is denied. */
export interface ServiceAccess {
  /** The stream whose event subjects it publishes (the stream it owns), if any. */
  owns?: StreamName;
  /** Durables it pulls from and acknowledges (dead letters go to `dlq.<durable>`). */
  durables: DurableRef[];
  /** Streams it reads whole with ordered consumers (ephemeral, any name, deleted after use): the audit's block. */
  orderedReads: StreamName[];
  /** Streams it reads single messages from by direct get (`$JS.API.DIRECT.GET.<stream>`). */
  directGets: StreamName[];
  /** Streams it reads single messages from through the stream leader (`$JS.API.STREAM.MSG.GET.<stream>`). */
  msgGets: StreamName[];
  buckets: BucketUse[];
  /** Core subjects it subscribes to besides its inbox. */
  subscribes: string[];
}

/** Every stream, the DLQ included. */
export const ALL_STREAMS: StreamName[] = [
  Streams.ORDERS,
  Streams.INVENTORY,
  Streams.PAYMENTS,
  Streams.NOTIFICATIONS,
  Streams.DLQ,
];

/** Every service with a durable follows the manual pauses of the consumer-control bucket (consumer-control.ts). */
const CONTROL_READ: BucketUse = { bucket: CONSUMER_CONTROL_BUCKET, write: false };

/**
 * The declared access of each service. Durables must match each service's consumer specs (a unit test checks it);
 * buckets and reads match what each service's code opens and reads.
 */
export const serviceAccess: Record<ServiceUser, ServiceAccess> = {
  orders: {
    owns: Streams.ORDERS,
    durables: [
      { stream: Streams.INVENTORY, durable: Durables.ORDERS_INVENTORY },
      { stream: Streams.PAYMENTS, durable: Durables.ORDERS_PAYMENTS },
      { stream: Streams.ORDERS, durable: Durables.ORDERS_TIMEOUTS },
    ],
    orderedReads: [],
    directGets: [Streams.ORDERS],
    msgGets: [],
    buckets: [
      { bucket: "catalog", write: false },
      { bucket: "order-requests", write: true },
      { bucket: "orders-by-customer", write: true },
      // Customers' data keys (src/lib/pii): made on a first order, purged by an erasure.
      { bucket: "customer-keys", write: true },
      CONTROL_READ,
    ],
    // Admission control follows the terminal events of its orders (src/services/orders/admission.ts).
    subscribes: ["orders.>"],
  },
  inventory: {
    owns: Streams.INVENTORY,
    durables: [{ stream: Streams.ORDERS, durable: Durables.INVENTORY_ORDERS }],
    orderedReads: [],
    // INVENTORY: the adjustment outbox looks for a kept event on the stream before publishing it (adjustments.ts).
    directGets: [Streams.ORDERS, Streams.INVENTORY],
    msgGets: [Streams.INVENTORY],
    buckets: [
      { bucket: "catalog", write: true },
      { bucket: "stock", write: true },
      { bucket: "reservations", write: true },
      CONTROL_READ,
    ],
    subscribes: [],
  },
  payments: {
    owns: Streams.PAYMENTS,
    durables: [
      { stream: Streams.INVENTORY, durable: Durables.PAYMENTS_INVENTORY },
      { stream: Streams.ORDERS, durable: Durables.PAYMENTS_ORDERS },
    ],
    orderedReads: [],
    directGets: [Streams.ORDERS],
    msgGets: [],
    buckets: [{ bucket: "payments", write: true }, CONTROL_READ],
    subscribes: [],
  },
  notifications: {
    owns: Streams.NOTIFICATIONS,
    durables: [{ stream: Streams.ORDERS, durable: Durables.NOTIFICATIONS_ORDERS }],
    orderedReads: [],
    directGets: [Streams.NOTIFICATIONS, Streams.ORDERS],
    msgGets: [],
    // Reads customers' data keys to open the sealed e-mail address (src/lib/pii); never writes them.
    buckets: [{ bucket: "customer-keys", write: false }, CONTROL_READ],
    subscribes: [],
  },
  audit: {
    // A projector (src/services/audit/projector.ts): no durable, every stream read with ordered consumers.
    durables: [],
    orderedReads: ALL_STREAMS,
    directGets: [],
    msgGets: [],
    buckets: [],
    subscribes: [],
  },
};

/** Publish and subscribe allow/deny lists of one user, as nats-server takes them. */
export interface Permissions {
  publish: { allow: string[]; deny: string[] };
  subscribe: { allow: string[]; deny: string[] };
}

/** The inbox prefix of a user (nats.js `inboxPrefix`): its request replies and pull deliveries arrive there. */
export function inboxPrefixOf(user: string): string {
  return `_INBOX_${user}`;
}

const API = "$JS.API";

/** The event subjects of `stream` as its owner publishes them (`orders.*`, `payments.*.PaymentCaptured`, …). */
export function eventSubjectsOf(stream: StreamName): string[] {
  const subjects = eventTypes
    .filter((t) => catalog[t].stream === stream)
    .map((type) => subjectOf({ type, aggregate_id: "*" }));
  return [...new Set(subjects)];
}

/** Every durable any service declares, by stream. */
function allDurables(): DurableRef[] {
  return SERVICE_USERS.flatMap((s) => serviceAccess[s].durables);
}

/** Stream and consumer administration: denied to every service user, whatever else it is allowed. */
const ADMIN_API = [
  `${API}.STREAM.CREATE.>`,
  `${API}.STREAM.UPDATE.>`,
  `${API}.STREAM.DELETE.>`,
  `${API}.STREAM.PURGE.>`,
  `${API}.STREAM.MSG.DELETE.>`,
  `${API}.STREAM.SNAPSHOT.>`,
  `${API}.STREAM.RESTORE.>`,
  `${API}.STREAM.PEER.>`,
  `${API}.STREAM.LEADER.>`,
  `${API}.CONSUMER.DURABLE.CREATE.>`,
  `${API}.CONSUMER.LEADER.>`,
  `${API}.META.>`,
  `${API}.SERVER.>`,
  `${API}.ACCOUNT.>`,
];

/** Consumer create/delete on the event streams and the DLQ (`*` stream name allowed). */
function consumerAdminOf(stream: string): string[] {
  return [
    `${API}.CONSUMER.CREATE.${stream}`,
    `${API}.CONSUMER.CREATE.${stream}.>`,
    `${API}.CONSUMER.DELETE.${stream}.>`,
  ];
}

/** Create, delete, info, next and ack of one named consumer (every filter-subject form of the create call). */
function namedConsumer(stream: string, name: string): string[] {
  return [
    `${API}.CONSUMER.CREATE.${stream}.${name}`,
    `${API}.CONSUMER.CREATE.${stream}.${name}.>`,
    `${API}.CONSUMER.DELETE.${stream}.${name}`,
    `${API}.CONSUMER.INFO.${stream}.${name}`,
    `${API}.CONSUMER.MSG.NEXT.${stream}.${name}`,
    `$JS.ACK.${stream}.${name}.>`,
  ];
}

/** What a service needs of a KV bucket: bucket info, reads, watches/key listings (ordered consumers), writes. */
function bucketPermissions(b: BucketUse): string[] {
  const stream = `KV_${b.bucket}`;
  return [
    `${API}.STREAM.INFO.${stream}`,
    `${API}.DIRECT.GET.${stream}`,
    `${API}.DIRECT.GET.${stream}.>`,
    `${API}.STREAM.MSG.GET.${stream}`,
    // kv.watch() and kv.keys(): an ordered push consumer, delivered to the inbox prefix, with flow control.
    `${API}.CONSUMER.CREATE.${stream}`,
    `${API}.CONSUMER.CREATE.${stream}.>`,
    `${API}.CONSUMER.DELETE.${stream}.>`,
    `${API}.CONSUMER.INFO.${stream}.>`,
    `$JS.FC.${stream}.>`,
    ...(b.write ? [`$KV.${b.bucket}.>`] : []),
  ];
}

/** Is `name` one of the five service users? */
export function isServiceUser(name: string): name is ServiceUser {
  return (SERVICE_USERS as readonly string[]).includes(name);
}

/** The streams a service uses: owns, pulls from, reads, and the DLQ when it has durables (it dead-letters there). */
export function streamsUsedBy(service: ServiceUser): StreamName[] {
  const a = serviceAccess[service];
  const used = new Set<StreamName>([
    ...(a.owns ? [a.owns] : []),
    ...a.durables.map((d) => d.stream),
    ...a.orderedReads,
    ...a.directGets,
    ...a.msgGets,
  ]);
  if (a.durables.length > 0) used.add(Streams.DLQ);
  return ALL_STREAMS.filter((s) => used.has(s));
}

/** The permissions of a service user, derived from {@link serviceAccess}. */
export function servicePermissions(service: ServiceUser): Permissions {
  const a = serviceAccess[service];
  const allow = new Set<string>([`${API}.INFO`]);
  const add = (...s: string[]) => s.forEach((x) => allow.add(x));
  if (a.owns) add(...eventSubjectsOf(a.owns));
  for (const s of streamsUsedBy(service)) add(`${API}.STREAM.INFO.${s}`);
  for (const d of a.durables) {
    add(
      `${API}.CONSUMER.INFO.${d.stream}.${d.durable}`,
      `${API}.CONSUMER.MSG.NEXT.${d.stream}.${d.durable}`,
      `$JS.ACK.${d.stream}.${d.durable}.>`,
      `${DLQ_SUBJECT_PREFIX}.${d.durable}`,
    );
  }
  for (const s of a.directGets) add(`${API}.DIRECT.GET.${s}`, `${API}.DIRECT.GET.${s}.>`);
  for (const s of a.msgGets) add(`${API}.STREAM.MSG.GET.${s}`);
  for (const b of a.buckets) add(...bucketPermissions(b));
  const deny = new Set<string>(ADMIN_API);
  if (service === "audit") {
    // ---- audit: BEGIN (the projector: src/services/audit/projector.ts) -------------------------------------
    // It reads every stream with ordered consumers (ephemeral, `name_prefix: "audit_<stream>_…"`, acknowledging
    // nothing, deleted after use) and deletes its former `audit-<stream>` durables at start. NATS permissions have no
    // name-prefix wildcard, so consumer create/delete/info/next on those streams is allowed under any name…
    for (const s of a.orderedReads) {
      add(
        `${API}.CONSUMER.CREATE.${s}`,
        `${API}.CONSUMER.CREATE.${s}.>`,
        `${API}.CONSUMER.DELETE.${s}.*`,
        `${API}.CONSUMER.INFO.${s}.*`,
        `${API}.CONSUMER.MSG.NEXT.${s}.*`,
      );
    }
    // …except the other services' durables, denied by name (a deny wins over an allow).
    for (const d of allDurables()) namedConsumer(d.stream, d.durable).forEach((x) => deny.add(x));
    // ---- audit: END ----------------------------------------------------------------------------------------
  } else {
    for (const s of ALL_STREAMS) consumerAdminOf(s).forEach((x) => deny.add(x));
  }
  return {
    publish: { allow: [...allow], deny: [...deny] },
    subscribe: { allow: [`${inboxPrefixOf(service)}.>`, ...a.subscribes], deny: [] },
  };
}

/**
 * The operator: reads every stream, consumer and bucket (the checker reads streams with ordered consumers), redrives
 * dead letters (publishes the original event again, deletes the DLQ entry); creates, changes and deletes no stream
 * and touches no service's durable.
 */
export function operatorPermissions(user: "operator" | "console" = "operator"): Permissions {
  const allow = [
    `${API}.INFO`,
    `${API}.STREAM.INFO.>`,
    `${API}.STREAM.LIST`,
    `${API}.STREAM.NAMES`,
    `${API}.CONSUMER.INFO.>`,
    `${API}.CONSUMER.LIST.>`,
    `${API}.CONSUMER.NAMES.>`,
    `${API}.DIRECT.GET.>`,
    `${API}.STREAM.MSG.GET.>`,
    `${API}.STREAM.MSG.DELETE.${Streams.DLQ}`,
    ...ALL_STREAMS.flatMap((s) => [
      `${API}.CONSUMER.CREATE.${s}`,
      `${API}.CONSUMER.CREATE.${s}.>`,
      `${API}.CONSUMER.DELETE.${s}.*`,
      `${API}.CONSUMER.MSG.NEXT.${s}.*`,
    ]),
    // Pausing and resuming durables by hand (the console): the consumer-control bucket.
    ...bucketPermissions({ bucket: CONSUMER_CONTROL_BUCKET, write: true }),
    // Discarding a dead letter writes a discard record (the reason) to the DLQ stream, for the audit trail.
    `${DISCARD_SUBJECT_PREFIX}.>`,
    // DLQ redrive publishes the original event on its own subject.
    ...[Streams.ORDERS, Streams.INVENTORY, Streams.PAYMENTS, Streams.NOTIFICATIONS].flatMap(eventSubjectsOf),
  ];
  const deny = ADMIN_API.filter((s) => !s.startsWith(`${API}.STREAM.MSG.DELETE`));
  for (const d of allDurables())
    for (const x of namedConsumer(d.stream, d.durable)) if (!x.includes(".INFO.")) deny.push(x);
  return {
    publish: { allow, deny },
    subscribe: { allow: [`${inboxPrefixOf(user)}.>`], deny: [] },
  };
}

/** The permissions of every user; `admin` has none listed (everything is allowed). */
export function permissionsOf(user: NatsUser): Permissions | undefined {
  if (user === "admin") return undefined;
  if (user === "operator" || user === "console") return operatorPermissions(user);
  return servicePermissions(user);
}

/** Quotes a string for the nats-server configuration format. */
function q(s: string): string {
  return JSON.stringify(s);
}

/**
 * The nats-server configuration's `authorization` block: one user per service, `admin` and `operator`, with the
 * permissions above. `passwords` holds each user's password (plain text: the file is mode 0600 beside them).
 */
export function renderAuthorization(passwords: Record<NatsUser, string>): string {
  return renderUsers((user) => q(passwords[user]));
}

/** The environment variable holding `user`'s password in the Kubernetes NATS pods (`NATS_PASSWORD_ORDERS`, …). */
export function passwordEnvOf(user: NatsUser): string {
  return `NATS_PASSWORD_${user.toUpperCase()}`;
}

/**
 * The `authorization` block for Kubernetes (deploy/k8s/base/nats-auth.yaml, written by `npm run k8s:nats-auth`):
 * no password in it, each one an unquoted `$NATS_PASSWORD_<USER>` reference that nats-server resolves from its
 * environment, filled from the Secret `shopstream-nats-users` (one key per user).
 */
export function renderKubernetesAuthorization(): string {
  return renderUsers((user) => `$${passwordEnvOf(user)}`);
}

/** The `authorization` block, each user's password written as `password(user)` gives it (a quoted literal or a `$VAR`). */
function renderUsers(password: (user: NatsUser) => string): string {
  const lines = ["authorization {", "  users = ["];
  for (const user of NATS_USERS) {
    const p = permissionsOf(user);
    lines.push(`    {`, `      user: ${q(user)}`, `      password: ${password(user)}`);
    if (p) {
      const list = (xs: string[]) => `[${xs.map(q).join(", ")}]`;
      lines.push(
        `      permissions: {`,
        `        publish: { allow: ${list(p.publish.allow)}, deny: ${list(p.publish.deny)} }`,
        `        subscribe: { allow: ${list(p.subscribe.allow)}${p.subscribe.deny.length ? `, deny: ${list(p.subscribe.deny)}` : ""} }`,
        `      }`,
      );
    }
    lines.push(`    }`);
  }
  lines.push("  ]", "}");
  return lines.join("\n") + "\n";
}

/** A whole nats-server configuration file: the authorization block (ports, JetStream, store dir come as arguments). */
export function renderNatsConfig(passwords: Record<NatsUser, string>): string {
  return [
    "# Generated by ShopStream from src/lib/messaging/permissions.ts: do not edit (regenerated at every start).",
    "# Contains passwords: keep it mode 0600.",
    renderAuthorization(passwords),
  ].join("\n");
}

/**
 * The permission matrix as a Markdown table: for each user, what it may publish and subscribe to (the allow lists,
 * then the deny lists). docs/security-nats.md embeds it between markers; `npm run docs:nats` rewrites it.
 */
export function permissionMatrix(): string {
  const rows = ["| user | publish allow | publish deny | subscribe allow |", "| --- | --- | --- | --- |"];
  const cell = (xs: string[]) => (xs.length ? xs.map((x) => `\`${x}\``).join("<br>") : "—");
  for (const user of NATS_USERS) {
    const p = permissionsOf(user);
    if (!p) rows.push(`| ${user} | everything | — | everything |`);
    else
      rows.push(
        `| ${user} | ${cell(p.publish.allow)} | ${cell(p.publish.deny)} | ${cell(p.subscribe.allow)} |`,
      );
  }
  return rows.join("\n") + "\n";
}
