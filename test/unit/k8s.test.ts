/**
 * The Kubernetes manifests (deploy/k8s), the Dockerfile and docs/operations.md, held to the code.
 *
 * Each overlay is rendered with `kubectl kustomize` (the binary named by KUBECTL, else `kubectl` on the PATH);
 * every object is validated against the Kubernetes API schemas (kubernetes-models, KEDA's with
 * @kubernetes-models/keda); then the contract is asserted: probes, shutdown timing, hardening, resources, PDBs,
 * autoscalers, network policies, labels, ports and environment variables against src/lib/ports.ts and the
 * services' config schemas, and the NATS cluster's configuration is run on real nats-server processes.
 *
 * Without kubectl, the base and the components (plain resources, a namespace and image names: nothing that
 * needs kustomize itself) are read directly and held to the same contract; the overlays' own resource files are
 * still validated, and only the tests that need an overlay rendered are skipped, saying why.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { after, describe, it } from "node:test";
import { type TObject, Type } from "@sinclair/typebox";
import { jetstreamManager } from "@nats-io/jetstream";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import {
  PrometheusRule,
  ServiceMonitor,
} from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { Deployment, StatefulSet } from "kubernetes-models/apps/v1";
import { Job } from "kubernetes-models/batch/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, Namespace, Secret, Service, ServiceAccount } from "kubernetes-models/v1";
import type { IContainer } from "kubernetes-models/v1/Container";
import type { IPodSpec } from "kubernetes-models/v1/PodSpec";
import type { INetworkPolicyPeer } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicyPeer";
import type { INetworkPolicyPort } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicyPort";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { parseConfig } from "../../src/lib/config.js";
import { defaultPorts } from "../../src/lib/ports.js";
import {
  NATS_USERS,
  passwordEnvOf,
  renderKubernetesAuthorization,
} from "../../src/lib/messaging/permissions.js";
import { CommonConfig, streamSpecs } from "../../src/lib/service.js";
import { ProvisionConfig } from "../../src/tools/provisioning.js";
import { until } from "../helpers/eventually.js";
import { PORT_ATTEMPTS, connectTo, findNatsServerBinary, freePort, portsInUse } from "../helpers/nats.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const K8S = join(ROOT, "deploy/k8s");
const KUBECTL = process.env["KUBECTL"] || "kubectl";
const kubectlFound = spawnSync(KUBECTL, ["version", "--client"], { stdio: "ignore" }).status === 0;
const NO_KUBECTL = `${KUBECTL} not found: the overlay cannot be rendered here (install kubectl, or set KUBECTL to one)`;
const NAMESPACE = "shopstream";
/** Environment variables a manifest may set beside the config schemas: Node's own. */
const RUNTIME_ENV = new Set(["NODE_OPTIONS"]);
/** Memory limit of a service: the 200 MB RSS target, with headroom. */
const MAX_SERVICE_MEMORY = 256 * 2 ** 20;

/** The services: one folder each under src/services, each with a Kubernetes Deployment of the same name. */
const SERVICES = readdirSync(join(ROOT, "src/services")).filter((d) =>
  existsSync(join(ROOT, "src/services", d, "main.ts")),
);
/**
 * Services that are not autoscaled: the audit is a projector with one active replica (elected) and a standby, so
 * more replicas add no throughput, and it has no durable consumer whose lag KEDA could read; the console serves a few
 * operators and has no durable either. Fixed at 2 replicas.
 */
const FIXED_SERVICES = ["audit", "console"];
const SCALED_SERVICES = SERVICES.filter((s) => !FIXED_SERVICES.includes(s));

// ---------------------------------------------------------------------------------------------------------
// Objects, rendering and schemas
// ---------------------------------------------------------------------------------------------------------

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  [field: string]: unknown;
}

function parseObjects(text: string, origin: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((doc) => {
      if (doc.errors.length > 0) throw new Error(`${origin}: ${doc.errors.map((e) => e.message).join("; ")}`);
      return doc.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
}

function kustomize(dir: string): K8sObject[] {
  const text = execFileSync(KUBECTL, ["kustomize", dir], { encoding: "utf8", maxBuffer: 32 * 2 ** 20 });
  return parseObjects(text, `kubectl kustomize ${relative(ROOT, dir)}`);
}

const CLUSTER_SCOPED = new Set(["Namespace"]);

/**
 * Reads a kustomization without kustomize: its resources and components, the namespace and image names applied.
 * Enough for deploy/k8s/base and the components; anything else (patches, generators, replicas) needs kubectl.
 */
function readKustomization(dir: string): K8sObject[] {
  const k = parseYaml(readFileSync(join(dir, "kustomization.yaml"), "utf8")) as Record<string, unknown>;
  const known = ["apiVersion", "kind", "namespace", "resources", "components", "images"];
  const other = Object.keys(k).filter((key) => !known.includes(key));
  if (other.length > 0) throw new Error(`${relative(ROOT, dir)}: ${other.join(", ")} need kubectl kustomize`);
  const objects: K8sObject[] = [];
  for (const entry of [...((k["resources"] as string[]) ?? []), ...((k["components"] as string[]) ?? [])]) {
    const path = join(dir, entry);
    objects.push(
      ...(statSync(path).isDirectory()
        ? readKustomization(path)
        : parseObjects(readFileSync(path, "utf8"), relative(ROOT, path))),
    );
  }
  const images = (k["images"] as { name: string; newName?: string; newTag?: string }[] | undefined) ?? [];
  for (const o of objects) {
    if (k["namespace"] && !CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = k["namespace"] as string;
    for (const c of podSpecOf(o)?.containers ?? []) {
      const image = images.find((i) => c.image === i.name || c.image?.startsWith(`${i.name}:`));
      if (image)
        c.image = `${image.newName ?? image.name}:${image.newTag ?? c.image!.split(":")[1] ?? "latest"}`;
    }
  }
  return objects;
}

/** What {@link kustomizeCombination} renders, read without kubectl. */
function readCombination(resources: string[], components: string[]): K8sObject[] {
  const objects = [...resources, ...components].flatMap((p) => readKustomization(join(K8S, p)));
  for (const o of objects) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = NAMESPACE;
  return objects;
}

/**
 * Renders, in a temp dir, a kustomization of `resources` and `components` (paths under deploy/k8s) in the
 * shopstream namespace, as an overlay would.
 */
function kustomizeCombination(resources: string[], components: string[]): K8sObject[] {
  const dir = mkdtempSync(join(tmpdir(), "shopstream-k8s-"));
  try {
    const rel = (p: string) => relative(dir, join(K8S, p));
    writeFileSync(
      join(dir, "kustomization.yaml"),
      [
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        `namespace: ${NAMESPACE}`,
        "resources:",
        ...resources.map((r) => `  - ${rel(r)}`),
        "components:",
        ...components.map((c) => `  - ${rel(c)}`),
      ].join("\n"),
    );
    return kustomize(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

type Model = new (data: never) => { validate(): void };
/** The schema of every kind the manifests use; a kind missing here fails the test rather than going unchecked. */
const MODELS: Record<string, Model> = {
  "v1/Namespace": Namespace,
  "v1/ConfigMap": ConfigMap,
  "v1/Secret": Secret,
  "v1/Service": Service,
  "v1/ServiceAccount": ServiceAccount,
  "apps/v1/Deployment": Deployment,
  "apps/v1/StatefulSet": StatefulSet,
  "batch/v1/Job": Job,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
  "networking.k8s.io/v1/NetworkPolicy": NetworkPolicy,
  "autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  // components/monitoring (test/unit/observability.test.ts renders it), for an overlay that adds it.
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
};

function schemaErrors(objects: readonly K8sObject[]): string[] {
  const errors: string[] = [];
  for (const o of objects) {
    const id = `${o.kind}/${o.metadata?.name}`;
    const model = MODELS[`${o.apiVersion}/${o.kind}`];
    if (!model) {
      errors.push(`${id}: no schema for ${o.apiVersion} ${o.kind} (add it to MODELS)`);
      continue;
    }
    // kustomize folds a long Secret value's base64 over lines; the API server's decoder skips the newlines.
    const data = o.kind === "Secret" ? (o["data"] as Record<string, string> | undefined) : undefined;
    const normalized = data
      ? { ...o, data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, v.replace(/\s+/g, "")])) }
      : o;
    try {
      new model(normalized as never).validate();
    } catch (err) {
      errors.push(`${id}: ${(err as Error).message}`);
    }
  }
  return errors;
}

// ---------------------------------------------------------------------------------------------------------
// Lookups
// ---------------------------------------------------------------------------------------------------------

interface HttpGetProbe {
  httpGet?: { path?: string; port: number | string };
}

function all(objects: readonly K8sObject[], kind: string): K8sObject[] {
  return objects.filter((o) => o.kind === kind);
}

function find(objects: readonly K8sObject[], kind: string, name: string): K8sObject | undefined {
  return objects.find((o) => o.kind === kind && o.metadata.name === name);
}

function get(objects: readonly K8sObject[], kind: string, name: string): K8sObject {
  const o = find(objects, kind, name);
  assert.ok(o, `${kind} ${name} is missing`);
  return o;
}

function spec<T = Record<string, unknown>>(o: K8sObject): T {
  return o["spec"] as T;
}

interface Workload {
  replicas?: number;
  selector: { matchLabels?: Record<string, string> };
  serviceName?: string;
  template: {
    metadata: { labels?: Record<string, string>; annotations?: Record<string, string> };
    spec: IPodSpec;
  };
  volumeClaimTemplates?: { metadata: { name: string } }[];
}

function podSpecOf(o: K8sObject): IPodSpec | undefined {
  return o.kind === "Deployment" || o.kind === "StatefulSet" || o.kind === "Job"
    ? spec<Workload>(o)?.template?.spec
    : undefined;
}

function podLabels(o: K8sObject): Record<string, string> {
  return spec<Workload>(o).template.metadata.labels ?? {};
}

/** Does a label selector (matchLabels only: the manifests use nothing else) select these labels? */
function selects(
  selector: { matchLabels?: Record<string, string> } | undefined,
  labels: Record<string, string>,
) {
  return Object.entries(selector?.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
}

function container(o: K8sObject, name = o.metadata.name): IContainer {
  const c = podSpecOf(o)?.containers.find((x) => x.name === name);
  assert.ok(c, `${o.kind} ${o.metadata.name} has no container ${name}`);
  return c;
}

/** A container port by number or name. */
function portNumber(c: IContainer, port: number | string): number | undefined {
  return typeof port === "number" ? port : c.ports?.find((p) => p.name === port)?.containerPort;
}

interface EnvValue {
  /** The literal value; undefined when it comes from a Secret or the downward API. */
  value: string | undefined;
  source: string;
}

/** A container's environment as Kubernetes builds it: envFrom ConfigMaps/Secrets first, then env. */
function environment(objects: readonly K8sObject[], c: IContainer): Map<string, EnvValue> {
  const env = new Map<string, EnvValue>();
  for (const from of c.envFrom ?? []) {
    if (from.configMapRef) {
      const cm = get(objects, "ConfigMap", from.configMapRef.name!);
      for (const [k, v] of Object.entries((cm["data"] as Record<string, string>) ?? {}))
        env.set(k, { value: v, source: `ConfigMap ${cm.metadata.name}` });
    }
    if (from.secretRef) {
      const secret = get(objects, "Secret", from.secretRef.name!);
      for (const k of Object.keys({ ...(secret["data"] as object), ...(secret["stringData"] as object) }))
        env.set(k, { value: undefined, source: `Secret ${secret.metadata.name}` });
    }
  }
  for (const e of c.env ?? []) {
    if (e.valueFrom?.configMapKeyRef) {
      const cm = get(objects, "ConfigMap", e.valueFrom.configMapKeyRef.name!);
      const value = (cm["data"] as Record<string, string>)[e.valueFrom.configMapKeyRef.key];
      env.set(e.name, { value, source: `ConfigMap ${cm.metadata.name}` });
    } else if (e.valueFrom) env.set(e.name, { value: undefined, source: "valueFrom" });
    else env.set(e.name, { value: e.value ?? "", source: "env" });
  }
  return env;
}

/** The value a service runs with: the manifest's, else the schema's default. */
function effective(env: Map<string, EnvValue>, schema: TObject, key: string): string | undefined {
  const set = env.get(key)?.value;
  if (set !== undefined && set !== "") return set;
  const d = (schema.properties[key] as { default?: string | number | boolean } | undefined)?.default;
  return d === undefined ? undefined : String(d);
}

function quantityBytes(q: string | number): number {
  const m = /^([0-9.]+)(Ki|Mi|Gi|k|M|G)?$/.exec(String(q));
  assert.ok(m, `memory quantity ${q}`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, k: 1e3, M: 1e6, G: 1e9 }[m[2] ?? ""] ?? 1;
  return Number(m[1]) * unit;
}

function preStopSleepSeconds(c: IContainer): number {
  const preStop = c.lifecycle?.preStop;
  if (preStop?.sleep) return preStop.sleep.seconds;
  const cmd = preStop?.exec?.command ?? [];
  return cmd[0] === "sleep" ? Number(cmd[1]) : 0;
}

// ---------------------------------------------------------------------------------------------------------
// Code facts: config schemas, consumers
// ---------------------------------------------------------------------------------------------------------

interface ServiceFacts {
  name: string;
  /** CommonConfig merged with the service's own schema, as startService parses it. */
  schema: TObject;
}

async function serviceFacts(): Promise<Map<string, ServiceFacts>> {
  const facts = new Map<string, ServiceFacts>();
  for (const s of SERVICES) {
    const mod = (await import(`../../src/services/${s}/service.js`)) as {
      definition: { name: string; config: TObject };
    };
    facts.set(s, {
      name: mod.definition.name,
      schema: Type.Composite([CommonConfig, mod.definition.config]),
    });
  }
  return facts;
}

/** Durable consumers per service, with their stream, from docs/architecture.md ("The pieces"). */
function documentedConsumers(): Map<string, Map<string, string>> {
  const doc = readFileSync(join(ROOT, "docs/architecture.md"), "utf8");
  const streams = new Set(streamSpecs.map((s) => s.name));
  const out = new Map<string, Map<string, string>>();
  for (const line of doc.split("\n")) {
    const row = /^\|\s*([a-z-]+) \((\d+)\)\s*\|[^|]*\|([^|]*)\|/.exec(line);
    if (!row || !SERVICES.includes(row[1]!)) continue;
    const service = row[1]!;
    const consumers = new Map<string, string>();
    for (const m of row[3]!.matchAll(/`([a-z]+-[a-z]+)`(?: → `([a-z]+)\.)?/g)) {
      if (!m[1]!.startsWith(`${service}-`)) continue;
      // A filter subject names the stream by its first token; an unfiltered audit consumer by its suffix.
      const stream = (m[2] ?? m[1]!.slice(service.length + 1)).toUpperCase();
      assert.ok(streams.has(stream), `docs/architecture.md: ${m[1]} reads ${stream}, which is no stream`);
      consumers.set(m[1]!, stream);
    }
    out.set(service, consumers);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Network policies
// ---------------------------------------------------------------------------------------------------------

interface PolicySpec {
  podSelector: { matchLabels?: Record<string, string> };
  policyTypes?: string[];
  ingress?: { from?: INetworkPolicyPeer[]; ports?: INetworkPolicyPort[] }[];
  egress?: { to?: INetworkPolicyPeer[]; ports?: INetworkPolicyPort[] }[];
}

/** Who is on the other side of a connection: a pod of this namespace, or something elsewhere. */
type Peer = { pod: Record<string, string> } | { namespace: string } | "outside";

function peerMatches(p: INetworkPolicyPeer, peer: Peer): boolean {
  if (peer === "outside") return p.ipBlock !== undefined && !p.podSelector && !p.namespaceSelector;
  if ("namespace" in peer) {
    return (
      !p.podSelector &&
      !p.ipBlock &&
      p.namespaceSelector !== undefined &&
      selects(p.namespaceSelector, { "kubernetes.io/metadata.name": peer.namespace })
    );
  }
  if (p.ipBlock) return false;
  const sameNamespace =
    !p.namespaceSelector || selects(p.namespaceSelector, { "kubernetes.io/metadata.name": NAMESPACE });
  return sameNamespace && selects(p.podSelector ?? {}, peer.pod);
}

function portMatches(ports: INetworkPolicyPort[] | undefined, port: number, protocol = "TCP"): boolean {
  return (
    !ports ||
    ports.some((p) => (p.protocol ?? "TCP") === protocol && (p.port === undefined || p.port === port))
  );
}

function policiesFor(objects: readonly K8sObject[], labels: Record<string, string>): PolicySpec[] {
  return all(objects, "NetworkPolicy")
    .map((o) => spec<PolicySpec>(o))
    .filter((p) => selects(p.podSelector, labels));
}

/** May `peer` open a connection to `port` of pods with `labels`? (No policy of that type = not isolated.) */
function ingressAllowed(
  objects: readonly K8sObject[],
  labels: Record<string, string>,
  peer: Peer,
  port: number,
) {
  const policies = policiesFor(objects, labels).filter((p) =>
    (p.policyTypes ?? ["Ingress"]).includes("Ingress"),
  );
  return (
    policies.length === 0 ||
    policies.some((p) =>
      (p.ingress ?? []).some(
        (r) => portMatches(r.ports, port) && (!r.from?.length || r.from.some((f) => peerMatches(f, peer))),
      ),
    )
  );
}

function egressAllowed(
  objects: readonly K8sObject[],
  labels: Record<string, string>,
  peer: Peer,
  port: number,
  protocol = "TCP",
) {
  const policies = policiesFor(objects, labels).filter((p) => p.policyTypes?.includes("Egress"));
  return (
    policies.length === 0 ||
    policies.some((p) =>
      (p.egress ?? []).some(
        (r) =>
          portMatches(r.ports, port, protocol) && (!r.to?.length || r.to.some((t) => peerMatches(t, peer))),
      ),
    )
  );
}

/**
 * Can a pod with `labels` reach `url` under the network policies? A host that is a Service of the render is
 * followed to its pods (egress from the client, ingress at the server, on the target port); any other host is
 * outside the namespace. Returns what blocks it, or undefined.
 */
function unreachable(
  objects: readonly K8sObject[],
  labels: Record<string, string>,
  url: string,
): string | undefined {
  const u = new URL(url);
  const port = Number(u.port) || { "https:": 443, "http:": 80, "nats:": 4222, "postgres:": 5432 }[u.protocol];
  assert.ok(port, `no port in ${url}`);
  const local = /^([a-z0-9-]+)(\.shopstream(\.svc(\.cluster\.local)?)?)?$/.exec(u.hostname)?.[1];
  const svc = local ? find(objects, "Service", local) : undefined;
  if (!svc) {
    const peer: Peer = /\.svc(\.cluster\.local)?$/.test(u.hostname)
      ? { namespace: u.hostname.split(".")[1]! }
      : "outside";
    return egressAllowed(objects, labels, peer, port) ? undefined : `no egress to ${u.hostname}:${port}`;
  }
  const svcSpec = spec<{
    selector: Record<string, string>;
    ports: { port: number; targetPort?: number | string }[];
  }>(svc);
  const servicePort = svcSpec.ports.find((p) => p.port === port);
  if (!servicePort) return `Service ${local} has no port ${port}`;
  const backend = objects.find(
    (o) => podSpecOf(o) && selects({ matchLabels: svcSpec.selector }, podLabels(o)),
  );
  if (!backend) return `Service ${local} selects no pod`;
  const target = portNumber(
    container(backend, podSpecOf(backend)!.containers[0]!.name),
    servicePort.targetPort ?? port,
  );
  if (!target) return `Service ${local}: target port ${servicePort.targetPort} is no container port`;
  if (!egressAllowed(objects, labels, { pod: podLabels(backend) }, target))
    return `no egress to ${local}:${target}`;
  if (!ingressAllowed(objects, podLabels(backend), { pod: labels }, target))
    return `${local} refuses ingress on ${target}`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------------------------

interface Expectations {
  /** Replicas of each service Deployment and of NATS. */
  serviceReplicas: number;
  natsReplicas: number;
  /** Autoscaling: "hpa", "keda" or none. */
  autoscaling: "hpa" | "keda" | "none";
}

/** Asserts everything ARCHITECTURE.md and docs/architecture.md ask of a rendering. */
function assertContract(objects: readonly K8sObject[], facts: Map<string, ServiceFacts>, want: Expectations) {
  it("puts every namespaced object in the shopstream namespace, which enforces the restricted pod standard", () => {
    for (const o of objects.filter((x) => !CLUSTER_SCOPED.has(x.kind)))
      assert.equal(o.metadata.namespace, NAMESPACE, `${o.kind} ${o.metadata.name}`);
    const ns = get(objects, "Namespace", NAMESPACE);
    assert.equal(ns.metadata.labels?.["pod-security.kubernetes.io/enforce"], "restricted");
  });

  it("names every object of a service after it: folder = Deployment = app label = metric service label", () => {
    for (const s of SERVICES) {
      assert.equal(facts.get(s)!.name, s, `src/services/${s} runs as "${facts.get(s)!.name}"`);
      assert.ok(existsSync(join(K8S, "base", `${s}.yaml`)), `deploy/k8s/base/${s}.yaml`);
      const d = get(objects, "Deployment", s);
      for (const labels of [d.metadata.labels, podLabels(d)]) {
        assert.equal(labels?.["app"], s);
        assert.equal(labels?.["app.kubernetes.io/name"], s);
      }
      assert.deepEqual(spec<Workload>(d).selector.matchLabels, { app: s });
      assert.equal(container(d).name, s);
      assert.deepEqual(container(d).command, ["node", `dist/services/${s}/main.js`]);
    }
    // Anything labelled with an app is labelled consistently.
    for (const o of objects) {
      const app = o.metadata.labels?.["app"];
      if (app)
        assert.equal(o.metadata.labels?.["app.kubernetes.io/name"], app, `${o.kind} ${o.metadata.name}`);
    }
  });

  it("exposes each service on its port from src/lib/ports.ts, and lets Prometheus scrape it there", () => {
    for (const s of SERVICES) {
      const port = defaultPorts[s as keyof typeof defaultPorts];
      const d = get(objects, "Deployment", s);
      assert.deepEqual(container(d).ports, [{ name: "http", containerPort: port }], s);
      const svc = spec<{ selector: Record<string, string>; ports: { port: number; targetPort: string }[] }>(
        get(objects, "Service", s),
      );
      assert.deepEqual(svc.selector, { app: s });
      assert.deepEqual(
        svc.ports.map((p) => [p.port, portNumber(container(d), p.targetPort)]),
        [[port, port]],
      );
      assert.deepEqual(spec<Workload>(d).template.metadata.annotations, {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": String(port),
        "prometheus.io/path": "/metrics",
      });
      const env = environment(objects, container(d));
      assert.equal(Number(effective(env, facts.get(s)!.schema, "PORT")), port, `${s} listens on its port`);
    }
  });

  it("probes /health (startup, liveness) and /ready (readiness) on the service port", () => {
    for (const s of SERVICES) {
      const c = container(get(objects, "Deployment", s));
      const port = defaultPorts[s as keyof typeof defaultPorts];
      const probe = (p: HttpGetProbe | undefined, what: string) => {
        assert.ok(p?.httpGet, `${s}: ${what} is an HTTP probe`);
        assert.equal(portNumber(c, p.httpGet.port), port, `${s}: ${what} port`);
        return p.httpGet.path;
      };
      assert.equal(probe(c.livenessProbe, "livenessProbe"), "/health", s);
      assert.equal(probe(c.readinessProbe, "readinessProbe"), "/ready", s);
      assert.equal(probe(c.startupProbe, "startupProbe"), "/health", s);
    }
  });

  it("gives the drain time to finish: grace period > preStop sleep + DRAIN_TIMEOUT_MS", () => {
    for (const s of SERVICES) {
      const d = get(objects, "Deployment", s);
      const c = container(d);
      const drainMs = Number(effective(environment(objects, c), facts.get(s)!.schema, "DRAIN_TIMEOUT_MS"));
      const sleepS = preStopSleepSeconds(c);
      assert.ok(sleepS >= 2 && sleepS <= 15, `${s}: a preStop sleep of a few seconds (got ${sleepS})`);
      const grace = podSpecOf(d)!.terminationGracePeriodSeconds ?? 30;
      assert.ok(grace > sleepS + drainMs / 1000, `${s}: ${grace} s > ${sleepS} s + ${drainMs} ms`);
    }
  });

  it("runs every container hardened: non-root, read-only root, no capabilities, no privilege escalation", () => {
    const dockerUser = /^USER (\d+)(?::(\d+))?$/m.exec(readFileSync(join(ROOT, "Dockerfile"), "utf8"));
    for (const o of objects.filter((x) => podSpecOf(x))) {
      const pod = podSpecOf(o)!;
      const id = `${o.kind} ${o.metadata.name}`;
      assert.equal(pod.securityContext?.runAsNonRoot, true, id);
      assert.equal(pod.securityContext?.seccompProfile?.type, "RuntimeDefault", id);
      assert.notEqual(pod.automountServiceAccountToken, true, `${id}: no API token`);
      for (const c of pod.containers) {
        assert.equal(c.securityContext?.allowPrivilegeEscalation, false, `${id}/${c.name}`);
        assert.equal(c.securityContext?.readOnlyRootFilesystem, true, `${id}/${c.name}`);
        assert.deepEqual(c.securityContext?.capabilities?.drop, ["ALL"], `${id}/${c.name}`);
        assert.ok(
          c.resources?.requests?.["cpu"] && c.resources.requests["memory"],
          `${id}/${c.name} requests`,
        );
        assert.ok(c.resources?.limits?.["memory"], `${id}/${c.name} has a memory limit`);
      }
      // The ShopStream image runs as its Dockerfile's numeric USER.
      if (pod.containers.some((c) => c.command?.[0] === "node")) {
        assert.ok(dockerUser, "Dockerfile: USER <uid>:<gid>");
        assert.equal(pod.securityContext?.runAsUser, Number(dockerUser[1]), id);
      }
    }
    for (const s of SERVICES) {
      const limit = container(get(objects, "Deployment", s)).resources!.limits!["memory"]!;
      assert.ok(quantityBytes(limit) <= MAX_SERVICE_MEMORY, `${s}: memory limit ${limit} <= 256Mi`);
    }
  });

  it("sets only variables the services read, with values their config schemas accept", () => {
    for (const s of SERVICES) {
      const { schema } = facts.get(s)!;
      const env = environment(objects, container(get(objects, "Deployment", s)));
      const unknown = [...env.keys()].filter((k) => !(k in schema.properties) && !RUNTIME_ENV.has(k));
      assert.deepEqual(
        unknown,
        [],
        `${s}: variables no config schema declares (from ${[...env.values()].map((v) => v.source).join(", ")})`,
      );
      // What start-up would parse (a Secret's value is not known here, so it is left out).
      const literal = Object.fromEntries(
        [...env].filter(([, v]) => v.value !== undefined).map(([k, v]) => [k, v.value]),
      );
      assert.doesNotThrow(
        () => parseConfig(schema, literal),
        `${s}: the manifests' values pass its config schema`,
      );
      // A default that names the loopback is right on a laptop and wrong in a pod: the manifest must set it.
      for (const [key, prop] of Object.entries(schema.properties)) {
        const d = (prop as { default?: unknown }).default;
        if (typeof d === "string" && d.includes("127.0.0.1"))
          assert.ok(env.get(key)?.value, `${s}: ${key} must be set (its default is ${d})`);
      }
      assert.equal(effective(env, schema, "HOST"), "0.0.0.0", `${s}: listens on every interface`);
      const natsService = new URL(effective(env, schema, "NATS_URL")!.split(",")[0]!).hostname;
      assert.ok(find(objects, "Service", natsService), `${s}: NATS_URL names the Service ${natsService}`);
      const replicas = Number(effective(env, schema, "STREAM_REPLICAS"));
      assert.equal(replicas, want.natsReplicas, `${s}: STREAM_REPLICAS = the NATS cluster size`);
    }
    const audit = environment(objects, container(get(objects, "Deployment", "audit")));
    assert.match(audit.get("DATABASE_URL")?.source ?? "", /valueFrom/, "audit: DATABASE_URL from a Secret");
  });

  it("runs the expected replicas, each Deployment with a PodDisruptionBudget", () => {
    for (const s of SERVICES) {
      const d = get(objects, "Deployment", s);
      assert.equal(spec<Workload>(d).replicas, want.serviceReplicas, s);
      const pdbs = all(objects, "PodDisruptionBudget").filter((p) =>
        selects(spec<{ selector: { matchLabels?: Record<string, string> } }>(p).selector, podLabels(d)),
      );
      assert.equal(pdbs.length, 1, `${s}: one PodDisruptionBudget`);
      const pdb = spec<{ minAvailable?: number; maxUnavailable?: number }>(pdbs[0]!);
      // With 2+ replicas one must stay; with 1, a PDB of minAvailable 1 would block every node drain.
      if (want.serviceReplicas >= 2) assert.equal(pdb.minAvailable, 1, s);
      else assert.equal(pdb.maxUnavailable, 1, s);
    }
  });

  it(`scales every service (the audit aside: fixed, active and standby) with ${want.autoscaling === "none" ? "no autoscaler" : want.autoscaling}`, () => {
    const hpas = all(objects, "HorizontalPodAutoscaler");
    const scaledObjects = all(objects, "ScaledObject");
    if (want.autoscaling !== "hpa")
      assert.deepEqual(
        hpas.map((h) => h.metadata.name),
        [],
      );
    if (want.autoscaling !== "keda")
      assert.deepEqual(
        scaledObjects.map((h) => h.metadata.name),
        [],
      );
    for (const s of FIXED_SERVICES) {
      const targets = [...hpas, ...scaledObjects].filter(
        (h) => spec<{ scaleTargetRef: { name: string } }>(h).scaleTargetRef.name === s,
      );
      assert.deepEqual(
        targets.map((t) => t.kind),
        [],
        `${s}: not autoscaled (active and standby)`,
      );
    }
    for (const s of SCALED_SERVICES) {
      if (want.autoscaling === "hpa") {
        const mine = hpas.filter(
          (h) => spec<{ scaleTargetRef: { kind: string; name: string } }>(h).scaleTargetRef.name === s,
        );
        assert.equal(mine.length, 1, `${s}: one HorizontalPodAutoscaler`);
        const h = spec<{
          scaleTargetRef: { kind: string; apiVersion: string };
          minReplicas: number;
          maxReplicas: number;
          metrics: { type: string; resource?: { name: string } }[];
        }>(mine[0]!);
        assert.equal(h.scaleTargetRef.kind, "Deployment");
        assert.equal(h.minReplicas, 2, s);
        assert.ok(h.maxReplicas > h.minReplicas && h.maxReplicas <= 10, s);
        assert.ok(
          h.metrics.some((m) => m.type === "Resource" && m.resource?.name === "cpu"),
          `${s}: on CPU`,
        );
        assert.ok(want.serviceReplicas >= h.minReplicas, `${s}: an apply never scales below the HPA minimum`);
      }
      if (want.autoscaling === "keda") {
        const mine = scaledObjects.filter(
          (o) => spec<{ scaleTargetRef: { name: string } }>(o).scaleTargetRef.name === s,
        );
        assert.equal(mine.length, 1, `${s}: one ScaledObject (KEDA allows one per Deployment)`);
      }
    }
  });

  it("denies by default, and allows each connection the system makes", () => {
    const denyAll = all(objects, "NetworkPolicy")
      .map((o) => spec<PolicySpec>(o))
      .find((p) => Object.keys(p.podSelector.matchLabels ?? {}).length === 0 && !p.ingress && !p.egress);
    assert.ok(denyAll, "a default-deny NetworkPolicy selecting every pod");
    assert.deepEqual(denyAll.policyTypes?.slice().sort(), ["Egress", "Ingress"]);

    const nats = podLabels(get(objects, "StatefulSet", "nats"));
    for (const o of objects.filter((x) => podSpecOf(x))) {
      const labels = podLabels(o);
      assert.ok(egressAllowed(objects, labels, "outside", 53, "UDP"), `${o.metadata.name}: DNS`);
    }
    for (const s of SERVICES) {
      const d = get(objects, "Deployment", s);
      const labels = podLabels(d);
      const port = defaultPorts[s as keyof typeof defaultPorts];
      assert.ok(
        ingressAllowed(objects, labels, { namespace: "monitoring" }, port),
        `${s}: Prometheus scrapes it`,
      );
      assert.ok(ingressAllowed(objects, labels, { pod: {} }, port), `${s}: reachable from the namespace`);
      assert.equal(
        ingressAllowed(objects, labels, "outside", port),
        s === "orders",
        `${s}: ${s === "orders" ? "the public API is open" : "closed to the outside"}`,
      );
      assert.ok(egressAllowed(objects, labels, { pod: nats }, 4222), `${s}: NATS`);
      // Every URL it is configured with (a Secret's is not known here: audit's PostgreSQL is checked below).
      const { schema } = facts.get(s)!;
      const env = environment(objects, container(d));
      for (const key of Object.keys(schema.properties).filter((k) => /_URL$|_ENDPOINT$/.test(k))) {
        const url = effective(env, schema, key);
        if (!url) continue;
        for (const one of url.split(","))
          assert.equal(unreachable(objects, labels, one.trim()), undefined, `${s}: ${key}=${one}`);
      }
    }
    const audit = podLabels(get(objects, "Deployment", "audit"));
    const postgres = find(objects, "Service", "postgres")
      ? "postgres://postgres:5432/shopstream"
      : "postgres://db.example.com:5432/shopstream";
    assert.equal(unreachable(objects, audit, postgres), undefined, "audit: PostgreSQL");
    // NATS members reach each other on the cluster port.
    assert.ok(
      ingressAllowed(objects, nats, { pod: nats }, 6222) && egressAllowed(objects, nats, { pod: nats }, 6222),
    );
  });

  it("connects every service to NATS as its own user, with only its own password mounted", () => {
    for (const s of SERVICES) {
      const d = get(objects, "Deployment", s);
      assert.deepEqual(natsCredential(d, container(d)), { user: s, key: s }, s);
    }
  });

  it("configures NATS with the users and permissions of src/lib/messaging/permissions.ts, passwords from the users Secret", () => {
    const conf = natsConfig(objects);
    assert.match(conf.text, /^\s*include\s+"?auth\.conf"?\s*$/m, "nats.conf includes auth.conf");
    assert.doesNotMatch(conf.text, /authorization|password/, "the users are in auth.conf only");
    assert.equal(
      conf.files["auth.conf"],
      renderKubernetesAuthorization(),
      "auth.conf is the module's (regenerate: npm run k8s:nats-auth)",
    );
    const passwords = [...conf.files["auth.conf"].matchAll(/^\s*password:\s*(.*)$/gm)].map((m) => m[1]);
    assert.deepEqual(
      passwords,
      NATS_USERS.map((u) => `$${passwordEnvOf(u)}`),
      "no password in the file: one environment reference per user",
    );
    const c = container(get(objects, "StatefulSet", "nats"));
    for (const u of NATS_USERS) {
      const ref = c.env?.find((e) => e.name === passwordEnvOf(u))?.valueFrom?.secretKeyRef;
      assert.ok(
        ref && isUsersSecret(ref.name) && ref.key === u,
        `nats: ${passwordEnvOf(u)} from ${USERS_SECRET}/${u}`,
      );
      assert.notEqual(ref.optional, true, `nats: ${passwordEnvOf(u)} is required`);
    }
    // A generated Secret (the dev overlay's) has a key for every user.
    for (const secret of all(objects, "Secret").filter((x) => isUsersSecret(x.metadata.name)))
      assert.deepEqual(
        Object.keys({ ...(secret["data"] as object), ...(secret["stringData"] as object) }).sort(),
        [...NATS_USERS].sort(),
      );
  });

  it("provisions the streams, consumers and buckets with the Job shopstream-provision, as admin", () => {
    const job = get(objects, "Job", "shopstream-provision");
    const c = podSpecOf(job)!.containers[0]!;
    assert.deepEqual(c.command, ["node", "dist/tools/provision.js"]);
    assert.ok(existsSync(join(ROOT, "src/tools/provision.ts")));
    assert.deepEqual(natsCredential(job, c), { user: "admin", key: "admin" });
    assert.ok(["OnFailure", "Never"].includes(podSpecOf(job)!.restartPolicy ?? ""), "a Job's restartPolicy");
    // The declarations' settings as the services run them: the same streams, consumers and buckets.
    const env = environment(objects, c);
    const orders = environment(objects, container(get(objects, "Deployment", "orders")));
    const ordersSchema = facts.get("orders")!.schema;
    for (const key of Object.keys(ProvisionConfig.properties))
      assert.equal(
        effective(env, ProvisionConfig, key),
        effective(orders, ordersSchema, key),
        `shopstream-provision: ${key} as orders runs with it`,
      );
    assert.equal(Number(effective(env, ProvisionConfig, "STREAM_REPLICAS")), want.natsReplicas);
    const nats = podLabels(get(objects, "StatefulSet", "nats"));
    assert.ok(egressAllowed(objects, podLabels(job), { pod: nats }, 4222), "shopstream-provision: NATS");
    assert.equal(new URL(env.get("NATS_URL")!.value!).hostname, "nats");
  });

  it("runs NATS as a JetStream StatefulSet on PersistentVolumeClaims, configured for its size", () => {
    const sts = get(objects, "StatefulSet", "nats");
    const w = spec<Workload>(sts);
    assert.equal(w.replicas, want.natsReplicas);
    const c = container(sts);
    assert.match(c.image ?? "", /^nats:2\.1\d/);
    const headless = spec<{ clusterIP?: string; publishNotReadyAddresses?: boolean }>(
      get(objects, "Service", w.serviceName!),
    );
    assert.equal(headless.clusterIP, "None");
    assert.equal(headless.publishNotReadyAddresses, true, "peers find each other before they are ready");

    const conf = natsConfig(objects);
    assert.deepEqual(c.args, ["--config", `${conf.mountPath}/nats.conf`]);
    const storeDir = /^\s*store_dir:\s*(\S+)/m.exec(conf.text)?.[1];
    const claims = (w.volumeClaimTemplates ?? []).map((t) => t.metadata.name);
    const dataMount = c.volumeMounts?.find((m) => m.mountPath === storeDir);
    assert.ok(
      dataMount && claims.includes(dataMount.name),
      `store_dir ${storeDir} is a PersistentVolumeClaim`,
    );
    assert.match(conf.text, /^\s*server_name:\s*\$SERVER_NAME/m);
    const serverName = c.env?.find((e) => e.name === "SERVER_NAME");
    assert.equal(serverName?.valueFrom?.fieldRef?.fieldPath, "metadata.name", "server name = pod name");
    assert.equal(portNumber(c, "monitor"), Number(/^http:\s*\S+:(\d+)/m.exec(conf.text)?.[1]));
    assert.equal(portNumber(c, "client"), Number(/^listen:\s*\S+:(\d+)/m.exec(conf.text)?.[1]));

    const routes = [...conf.text.matchAll(/nats:\/\/([a-z0-9-]+)\.([a-z0-9-]+):(\d+)/g)];
    if (want.natsReplicas === 1)
      assert.doesNotMatch(conf.text, /cluster\s*\{/, "a single node is no cluster");
    else {
      assert.deepEqual(
        routes.map((r) => [r[1], r[2], Number(r[3])]),
        Array.from({ length: want.natsReplicas }, (_, i) => [
          `nats-${i}`,
          w.serviceName,
          portNumber(c, "cluster"),
        ]),
        "a route to every member through the headless Service",
      );
    }
    // Lame duck on preStop, through the pid file the config writes on a writable volume.
    const pidFile = /^pid_file:\s*(\S+)/m.exec(conf.text)?.[1];
    assert.deepEqual(c.lifecycle?.preStop?.exec?.command, ["nats-server", "--signal", `ldm=${pidFile}`]);
    assert.ok(
      c.volumeMounts?.some((m) => pidFile?.startsWith(`${m.mountPath}/`) && !m.readOnly),
      "pid file volume",
    );
    const lameDuck = Number(/^lame_duck_duration:\s*(\d+)s/m.exec(conf.text)?.[1]);
    const grace = Number(/^lame_duck_grace_period:\s*(\d+)s/m.exec(conf.text)?.[1]);
    assert.ok(
      (podSpecOf(sts)!.terminationGracePeriodSeconds ?? 30) > lameDuck + grace,
      "lame duck ends before SIGKILL",
    );
    const pdb = all(objects, "PodDisruptionBudget").find((p) =>
      selects(spec<{ selector: { matchLabels?: Record<string, string> } }>(p).selector, podLabels(sts)),
    );
    assert.equal(spec<{ maxUnavailable?: number }>(pdb!).maxUnavailable, 1);
  });
}

/**
 * The NATS configuration file of the StatefulSet, where it is mounted, and every file beside it (the config volume:
 * one ConfigMap, or several projected into one directory).
 */
function natsConfig(objects: readonly K8sObject[]): {
  text: string;
  mountPath: string;
  files: Record<string, string>;
} {
  const sts = get(objects, "StatefulSet", "nats");
  const mount = container(sts).volumeMounts?.find((m) => m.name === "config");
  const volume = podSpecOf(sts)!.volumes?.find((v) => v.name === "config");
  const names = volume?.configMap?.name
    ? [volume.configMap.name]
    : (volume?.projected?.sources ?? []).map((src) => src.configMap?.name);
  assert.ok(mount && names.length > 0 && names.every((n) => n), "the nats config volume: ConfigMaps only");
  const files: Record<string, string> = {};
  for (const name of names as string[]) {
    const data = (get(objects, "ConfigMap", name)["data"] as Record<string, string> | undefined) ?? {};
    for (const [file, text] of Object.entries(data)) {
      assert.ok(!(file in files), `${file} is in two ConfigMaps of the nats config volume`);
      files[file] = text;
    }
  }
  const text = files["nats.conf"];
  assert.ok(text, `the nats config volume (${names.join(", ")}) has nats.conf`);
  return { text, mountPath: mount.mountPath, files };
}

/** The Secret every NATS password comes from; generated (name-hash suffixed) in the dev overlay. */
const USERS_SECRET = "shopstream-nats-users";

function isUsersSecret(name: string | undefined): boolean {
  return name === USERS_SECRET || (name?.startsWith(`${USERS_SECRET}-`) ?? false);
}

/**
 * The NATS user of a pod's container and the Secret key its password file comes from: NATS_USER, and the volume
 * mounted at NATS_PASSWORD_FILE's directory, which must project exactly one key of the users Secret, to that file.
 */
function natsCredential(o: K8sObject, c: IContainer): { user: string | undefined; key: string } {
  const id = `${o.kind} ${o.metadata.name}`;
  const env = new Map((c.env ?? []).map((e) => [e.name, e]));
  assert.equal(env.get("NATS_PASSWORD"), undefined, `${id}: no NATS_PASSWORD, a file`);
  const file = env.get("NATS_PASSWORD_FILE")?.value;
  assert.ok(file, `${id}: NATS_PASSWORD_FILE`);
  const mount = c.volumeMounts?.find((m) => m.mountPath === dirname(file));
  assert.ok(mount, `${id}: a volume mounted at ${dirname(file)}`);
  assert.equal(mount.readOnly, true, `${id}: read-only`);
  const secret = podSpecOf(o)!.volumes?.find((v) => v.name === mount.name)?.secret;
  assert.ok(isUsersSecret(secret?.secretName), `${id}: the password volume is the Secret ${USERS_SECRET}`);
  assert.equal(secret!.items?.length, 1, `${id}: one key of it, its own, is all the pod sees`);
  assert.equal(secret!.items[0]!.path, basename(file), id);
  return { user: env.get("NATS_USER")?.value, key: secret!.items[0]!.key };
}

// ---------------------------------------------------------------------------------------------------------
// The renderings
// ---------------------------------------------------------------------------------------------------------

const facts = await serviceFacts();
/** Production as rendered by kustomize, or without kubectl the base plus the HPA component it adds. */
const production = kubectlFound
  ? kustomize(join(K8S, "overlays/production"))
  : readCombination(["base"], ["components/hpa"]);
const dev = kubectlFound ? kustomize(join(K8S, "overlays/dev")) : [];
const keda = kubectlFound
  ? kustomizeCombination(["base"], ["components/keda"])
  : readCombination(["base"], ["components/keda"]);

describe(`production (${kubectlFound ? "kubectl kustomize deploy/k8s/overlays/production" : "base + components/hpa, read without kubectl"})`, () => {
  it("matches the Kubernetes schemas, object by object", () => {
    assert.ok(production.length > 30);
    assert.deepEqual(schemaErrors(production), []);
  });
  assertContract(production, facts, { serviceReplicas: 2, natsReplicas: 3, autoscaling: "hpa" });

  it("holds no credential: every Secret, the NATS users' included, is created in the cluster", () => {
    assert.deepEqual(
      all(production, "Secret").map((x) => x.metadata.name),
      [],
    );
    for (const o of production.filter((x) => podSpecOf(x)))
      for (const c of podSpecOf(o)!.containers)
        for (const e of c.env ?? [])
          if (/PASSWORD|SECRET/.test(e.name) && !/_FILE$/.test(e.name))
            assert.ok(
              e.valueFrom?.secretKeyRef,
              `${o.metadata.name}: ${e.name} from a Secret, not a literal`,
            );
  });

  it("pins every image by tag", { skip: kubectlFound ? false : NO_KUBECTL }, () => {
    for (const o of production.filter((x) => podSpecOf(x))) {
      for (const c of podSpecOf(o)!.containers) {
        const tag = /:([^:/]+)$/.exec(c.image ?? "")?.[1];
        assert.ok(tag && tag !== "latest" && /\d/.test(tag), `${o.metadata.name}: ${c.image}`);
      }
    }
    assert.match(container(get(production, "StatefulSet", "nats")).image!, /^nats:2\.10\.\d+-alpine$/);
  });
});

describe(
  `dev (${kubectlFound ? "kubectl kustomize deploy/k8s/overlays/dev" : "needs kubectl"})`,
  { skip: kubectlFound ? false : NO_KUBECTL },
  () => {
    it("matches the Kubernetes schemas, object by object", () => {
      assert.deepEqual(schemaErrors(dev), []);
    });
    assertContract(dev, facts, { serviceReplicas: 1, natsReplicas: 1, autoscaling: "none" });

    it("runs the simulators on their ports, and a PostgreSQL behind the generated audit-database Secret", () => {
      for (const sim of ["payment-gateway", "mail-provider"] as const) {
        const d = get(dev, "Deployment", sim);
        assert.equal(spec<Workload>(d).replicas, 1);
        assert.deepEqual(container(d).command, ["node", `dist/simulators/${sim}/main.js`]);
        assert.deepEqual(container(d).ports, [{ name: "http", containerPort: defaultPorts[sim] }]);
        assert.equal(container(d).env?.find((e) => e.name === "HOST")?.value, "0.0.0.0");
        assert.ok(existsSync(join(ROOT, `src/simulators/${sim}/main.ts`)));
      }
      const ref = container(get(dev, "Deployment", "audit")).env?.find((e) => e.name === "DATABASE_URL")
        ?.valueFrom?.secretKeyRef;
      const secret = get(dev, "Secret", ref!.name!);
      const url = Buffer.from((secret["data"] as Record<string, string>)[ref!.key]!, "base64").toString();
      assert.equal(new URL(url).hostname, "postgres");
      assert.ok(find(dev, "Deployment", "postgres"));
    });
  },
);

describe(`KEDA (${kubectlFound ? "kubectl kustomize base + components/keda" : "base + components/keda, read without kubectl"})`, () => {
  it("matches the Kubernetes and KEDA schemas, object by object", () => {
    assert.deepEqual(schemaErrors(keda), []);
  });

  it("scales each service on the lag of each of its durable consumers (docs/architecture.md), and on CPU", () => {
    const consumers = documentedConsumers();
    assert.deepEqual(
      [...consumers.keys()].sort(),
      [...SERVICES].sort(),
      "docs/architecture.md lists every service",
    );
    const headless = spec<Workload>(get(keda, "StatefulSet", "nats")).serviceName;
    for (const s of SCALED_SERVICES) {
      const so = get(keda, "ScaledObject", s);
      const sp = spec<{
        scaleTargetRef: { name: string };
        minReplicaCount: number;
        maxReplicaCount: number;
        triggers: { type: string; metricType?: string; metadata: Record<string, string> }[];
      }>(so);
      assert.equal(sp.scaleTargetRef.name, s);
      assert.ok(find(keda, "Deployment", s));
      assert.equal(sp.minReplicaCount, 2);
      assert.ok(sp.maxReplicaCount > 2 && sp.maxReplicaCount <= 10);
      const lag = sp.triggers.filter((t) => t.type === "nats-jetstream");
      assert.deepEqual(
        new Map(lag.map((t) => [t.metadata["consumer"], t.metadata["stream"]])),
        consumers.get(s),
        `${s}: one trigger per durable consumer, on its stream`,
      );
      for (const t of lag) {
        assert.equal(
          t.metadata["natsServerMonitoringEndpoint"],
          `${headless}.${NAMESPACE}.svc.cluster.local:8222`,
        );
        assert.equal(t.metadata["account"], "$G");
        assert.match(t.metadata["lagThreshold"] ?? "", /^[1-9]\d*$/);
      }
      assert.ok(
        sp.triggers.some((t) => t.type === "cpu" && t.metricType === "Utilization"),
        `${s}: CPU too`,
      );
    }
    // KEDA polls the consumer leaders' monitoring port from its own namespace.
    const nats = podLabels(get(keda, "StatefulSet", "nats"));
    assert.ok(ingressAllowed(keda, nats, { namespace: "keda" }, 8222));
  });
});

describe("overlay files", () => {
  it("each resource an overlay adds is a complete, valid object; each patch is valid YAML", () => {
    for (const overlay of ["dev", "production"]) {
      const dir = join(K8S, "overlays", overlay);
      const k = parseYaml(readFileSync(join(dir, "kustomization.yaml"), "utf8")) as {
        resources?: string[];
        patches?: { path?: string }[];
      };
      for (const r of (k.resources ?? []).filter((r) => r.endsWith(".yaml")))
        assert.deepEqual(
          schemaErrors(parseObjects(readFileSync(join(dir, r), "utf8"), r)),
          [],
          `${overlay}/${r}`,
        );
      for (const p of (k.patches ?? []).filter((p) => p.path))
        assert.ok(
          parseObjects(readFileSync(join(dir, p.path!), "utf8"), p.path!).length > 0,
          `${overlay}/${p.path}`,
        );
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// NATS configuration on real nats-server processes
// ---------------------------------------------------------------------------------------------------------

/**
 * Runs the ConfigMap's nats.conf on this machine: the addresses, store dir, pid file and route hosts are swapped
 * for local ones (each swap must match, so the test breaks if the config changes shape), the rest is as deployed.
 */
class LocalNats {
  readonly procs: ChildProcess[] = [];
  readonly dir = mkdtempSync(join(tmpdir(), "shopstream-nats-conf-"));
  readonly log: string[] = [];
  /** Kills what is still running if the test process ends without {@link stop} (a crash, a timeout). */
  readonly #onExit = () => {
    for (const p of this.procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  };

  constructor() {
    process.on("exit", this.#onExit);
  }

  /**
   * Starts `nodes` servers on `conf` and resolves once each one listens on all its ports (client, monitor and, in a
   * cluster, routes). The ports are picked free ones; a free port is free only until someone binds it, so when a
   * server could not listen on one of them, every server of this start is killed and they all start again on fresh
   * ports (the routes name each other's), at most PORT_ATTEMPTS times. Any other early exit fails at once.
   */
  async start(
    config: { text: string; files: Record<string, string> },
    nodes: number,
    mountPaths: { data: string; pid: string },
  ) {
    const conf = config.text;
    const binary = findNatsServerBinary();
    // The files beside nats.conf (auth.conf), and the users' passwords in the environment as the Secret puts them.
    for (const [file, text] of Object.entries(config.files))
      if (file !== "nats.conf") writeFileSync(join(this.dir, file), text);
    for (let attempt = 1; ; attempt++) {
      const picked = new Set<number>();
      const pick = async () => {
        for (;;) {
          const port = await freePort();
          if (picked.has(port)) continue;
          picked.add(port);
          return port;
        }
      };
      const ports: { client: number; http: number; route: number }[] = [];
      for (let i = 0; i < nodes; i++)
        ports.push({ client: await pick(), http: await pick(), route: await pick() });
      const servers = ports.map((p, i) => {
        const swap = (text: string, from: string | RegExp, to: string) => {
          const matched = typeof from === "string" ? text.includes(from) : from.test(text);
          assert.ok(matched, `nats.conf has ${String(from)}`);
          return text.replaceAll(from, to);
        };
        let text = conf;
        text = swap(text, "0.0.0.0:4222", `127.0.0.1:${p.client}`);
        text = swap(text, "0.0.0.0:8222", `127.0.0.1:${p.http}`);
        text = swap(text, `store_dir: ${mountPaths.data}`, `store_dir: ${join(this.dir, `data-${i}`)}`);
        text = swap(text, `pid_file: ${mountPaths.pid}/`, `pid_file: ${this.dir}/${i}-`);
        if (nodes > 1) {
          text = swap(text, "0.0.0.0:6222", `127.0.0.1:${p.route}`);
          text = swap(text, /nats:\/\/nats-(\d+)\.[a-z-]+:6222/g, "nats://127.0.0.1:ROUTE$1");
          for (let k = 0; k < nodes; k++) text = text.replace(`ROUTE${k}`, String(ports[k]!.route));
        }
        const file = join(this.dir, `nats-${i}.conf`);
        writeFileSync(file, text);
        const proc = spawn(binary, ["--config", file], {
          env: { ...process.env, ...LOCAL_PASSWORDS, SERVER_NAME: `nats-${i}` },
        });
        const listening = this.#listening(proc, nodes > 1);
        this.procs.push(proc);
        const pidName = new RegExp(`pid_file: ${mountPaths.pid}/(\\S+)`).exec(conf)![1]!;
        return { ...p, pidFile: join(this.dir, `${i}-${pidName}`), proc, listening };
      });
      const results = await Promise.all(servers.map((s) => s.listening));
      const failed = results.find((r) => r.ok !== true);
      if (failed === undefined) return servers;
      await this.#kill(servers.map((s) => s.proc));
      const taken = portsInUse(failed.output.split("\n"));
      if (taken.length === 0 || !taken.every((port) => picked.has(port)) || attempt >= PORT_ATTEMPTS) {
        assert.fail(`nats-server did not start (attempt ${attempt} of ${PORT_ATTEMPTS}): ${failed.output}`);
      }
    }
  }

  /**
   * Resolves `{ ok: true }` once `proc` has said it listens on its client, monitor and (`cluster`) route ports, or
   * `{ ok: false }` with its output when it exits first or has not within 20 s; its output also goes to {@link log}.
   */
  #listening(proc: ChildProcess, cluster: boolean): Promise<{ ok: boolean; output: string }> {
    const wanted = ["Listening for client connections on", "Starting http monitor on"];
    if (cluster) wanted.push("Listening for route connections on");
    let output = "";
    return new Promise((resolve) => {
      const timer = setTimeout(
        () => resolve({ ok: false, output: `${output}\n(not listening after 20 s)` }),
        20_000,
      );
      const onData = (d: Buffer) => {
        this.log.push(d.toString());
        output += d.toString();
        if (wanted.every((w) => output.includes(w))) {
          clearTimeout(timer);
          resolve({ ok: true, output });
        }
      };
      proc.stdout?.on("data", onData);
      proc.stderr?.on("data", onData);
      proc.once("close", () => {
        clearTimeout(timer);
        resolve({ ok: false, output });
      });
    });
  }

  /** SIGKILLs `procs`, waits for them to exit and forgets them. */
  async #kill(procs: ChildProcess[]) {
    await Promise.all(
      procs.map(async (p) => {
        if (p.exitCode === null && p.signalCode === null) {
          const exited = once(p, "exit");
          p.kill("SIGKILL");
          await exited;
        }
        this.procs.splice(this.procs.indexOf(p), 1);
      }),
    );
  }

  async stop() {
    const exited = this.procs
      .filter((p) => p.exitCode === null && p.signalCode === null)
      .map((p) => once(p, "exit"));
    this.#onExit();
    process.off("exit", this.#onExit);
    await Promise.all(exited);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

async function jsz(
  httpPort: number,
): Promise<{ meta_cluster?: { leader?: string; cluster_size?: number }; config?: { store_dir?: string } }> {
  const res = await fetch(`http://127.0.0.1:${httpPort}/jsz`);
  return (await res.json()) as never;
}

/** The users' passwords the local nats-servers get, as the Secret shopstream-nats-users puts them in the pods. */
const LOCAL_PASSWORDS = Object.fromEntries(NATS_USERS.map((u) => [passwordEnvOf(u), `local${u}Password`]));

/** How long {@link until} may wait for the local nats-servers (a cluster forms in a few seconds). */
const NATS_WAIT = { timeoutMs: 20_000, intervalMs: 100 };

describe("the NATS configuration on nats-server", () => {
  const local = new LocalNats();
  after(() => local.stop());

  it("forms a 3-node JetStream cluster that stores an R3 stream, and the preStop command puts a node in lame duck", async () => {
    const sts = get(production, "StatefulSet", "nats");
    const c = container(sts);
    const data = c.volumeMounts!.find((m) => m.name === "data")!.mountPath;
    const pid = c.volumeMounts!.find((m) => m.name === "pid")!.mountPath;
    const servers = await local.start(natsConfig(production), 3, { data, pid });
    for (const s of servers) {
      const leader = await until(
        "a meta leader",
        async () => (await jsz(s.http)).meta_cluster?.leader || undefined,
        NATS_WAIT,
      );
      assert.match(leader, /^nats-[0-2]$/, local.log.join(""));
    }
    // Authentication is on: no user, no connection; admin (the provisioning Job's user) may create a stream.
    await assert.rejects(
      connectTo(`nats://127.0.0.1:${servers[0]!.client}`, { maxReconnectAttempts: 0 }),
      /Authorization|auth/i,
    );
    const nc = await connectTo(`nats://127.0.0.1:${servers[0]!.client}`, {
      user: "admin",
      pass: LOCAL_PASSWORDS[passwordEnvOf("admin")]!,
    });
    try {
      const jsm = await jetstreamManager(nc);
      const info = await until(
        "an R3 stream",
        () => jsm.streams.add({ name: "K8S_TEST", subjects: ["k8s.test.>"], num_replicas: 3 }),
        NATS_WAIT,
      );
      assert.equal(info.config.num_replicas, 3);
    } finally {
      await nc.close();
    }
    // The manifest's preStop command, on node 2's pid file.
    const [cmd, ...args] = c.lifecycle!.preStop!.exec!.command!;
    const ldm = args.map((a) => a.replace(/^ldm=.*/, `ldm=${servers[2]!.pidFile}`));
    const signalled = spawnSync(cmd === "nats-server" ? findNatsServerBinary() : cmd!, ldm, {
      encoding: "utf8",
    });
    assert.equal(signalled.status, 0, signalled.stderr);
    await until("lame duck mode", () => local.log.join("").includes("Entering lame duck mode"), NATS_WAIT);
  });

  it(
    "runs the dev overlay's single node as JetStream without a cluster",
    { skip: kubectlFound ? false : NO_KUBECTL },
    async () => {
      const c = container(get(dev, "StatefulSet", "nats"));
      const data = c.volumeMounts!.find((m) => m.name === "data")!.mountPath;
      const pid = c.volumeMounts!.find((m) => m.name === "pid")!.mountPath;
      const [server] = await local.start(natsConfig(dev), 1, { data, pid });
      const info = await until(
        "JetStream",
        async () => {
          const j = await jsz(server!.http);
          return j.config?.store_dir ? j : undefined;
        },
        NATS_WAIT,
      );
      assert.equal(info.meta_cluster?.cluster_size ?? 1, 1);
    },
  );
});

// ---------------------------------------------------------------------------------------------------------
// The image and the operations guide
// ---------------------------------------------------------------------------------------------------------

describe("Dockerfile", () => {
  const text = readFileSync(join(ROOT, "Dockerfile"), "utf8");

  it("builds one non-root image for every service, stopped with SIGTERM", () => {
    const stages = [...text.matchAll(/^FROM (\S+)(?: AS (\S+))?$/gm)];
    assert.ok(stages.length >= 2, "multi-stage");
    assert.match(text, /^ARG NODE_IMAGE=node:(20|22)-[a-z-]*slim$/m);
    assert.match(text, /RUN npm ci[^\n]*\n[\s\S]*RUN npm run build/);
    assert.match(text, /RUN npm ci --omit=dev/);
    assert.match(text, /^STOPSIGNAL SIGTERM$/m);
    assert.match(text, /^ENV NODE_ENV=production/m);
    assert.match(text, /^USER \d+:\d+$/m);
    const cmd = JSON.parse(/^CMD (\[.*\])$/m.exec(text)![1]!) as string[];
    assert.equal(cmd[0], "node");
    assert.ok(existsSync(join(ROOT, cmd[1]!.replace(/^dist/, "src").replace(/\.js$/, ".ts"))), cmd[1]);
    const exposed = /^EXPOSE (.+)$/m.exec(text)![1]!.split(/\s+/).map(Number);
    assert.deepEqual(exposed, SERVICES.map((s) => defaultPorts[s as keyof typeof defaultPorts]).sort());
    const ignored = readFileSync(join(ROOT, ".dockerignore"), "utf8").split("\n");
    for (const p of ["**/node_modules", "dist", ".git"])
      assert.ok(ignored.includes(p), `.dockerignore: ${p}`);
  });
});

describe("docs/operations.md", () => {
  it("documents every environment variable of every service, with its default", () => {
    const doc = readFileSync(join(ROOT, "docs/operations.md"), "utf8");
    const rows = [...doc.matchAll(/^\|\s*`([A-Z0-9_]+)`\s*\|\s*([a-z-]+)\s*\|\s*([^|]+?)\s*\|/gm)].map(
      (m) => [m[1]!, m[2]!, m[3]!.trim()] as const,
    );
    const documented = new Map(rows.map(([name, service, d]) => [`${service} ${name}`, d]));
    const expected = new Map<string, string>();
    type Default = { default?: string | number | boolean };
    const show = (d: Default["default"]) => (d === undefined ? "—" : `\`${String(d)}\``);
    for (const [k, s] of Object.entries(CommonConfig.properties))
      expected.set(`all ${k}`, show((s as Default).default));
    for (const s of SERVICES) {
      const own = facts.get(s)!.schema.properties;
      for (const [k, p] of Object.entries(own)) {
        if (k in CommonConfig.properties) continue;
        expected.set(`${s} ${k}`, show((p as Default).default));
      }
    }
    assert.deepEqual(documented, expected);
  });
});
