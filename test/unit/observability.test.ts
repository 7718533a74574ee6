/**
 * The observability kit, held to itself: the alert rules (deploy/observability/alerts.rules.yml) pass
 * `promtool check rules` and their unit tests (`promtool test rules`), and those tests fail on a rule that is
 * wrong; the PrometheusRule of deploy/k8s/components/monitoring is the rule file's groups; the ServiceMonitor and
 * the PrometheusRule are valid objects (the Prometheus Operator's schemas, @kubernetes-models/prometheus-operator),
 * and the ServiceMonitor selects the five services' Services on their http port; the dashboard's ConfigMap carries
 * the dashboard; every alert has a runbook in
 * docs/operations.md; the dashboard's queries parse and cover every metric the alerts use.
 *
 * That every metric the PromQL names exists in the services' /metrics is test/e2e/observability.test.ts.
 *
 * promtool comes from Debian's `prometheus` package (`.ci/run` installs it); PROMTOOL names another binary.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, relative } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { parse as parseYaml, parseAllDocuments } from "yaml";
import { ConfigMap } from "kubernetes-models/v1";
import {
  DASHBOARD_CONFIGMAP_FILE,
  DASHBOARD_FILE,
  PROMETHEUS_RULE_FILE,
  PromQLSyntaxError,
  RULES_FILE,
  RULES_TEST_FILE,
  dashboardConfigMapOf,
  dashboardQueries,
  exposedMetricNames,
  metricNamesOf,
  prometheusRuleOf,
  readRules,
  ruleQueries,
} from "../../scripts/monitoring.js";
import { format } from "prettier";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const PROMTOOL = process.env["PROMTOOL"] || "promtool";
const COMPONENT = join(ROOT, "deploy/k8s/components/monitoring");
const KUBECTL = process.env["KUBECTL"] || "kubectl";
const kubectlFound = spawnSync(KUBECTL, ["version", "--client"], { stdio: "ignore" }).status === 0;
/** The five services: one folder each under src/services, each a Service of that name in deploy/k8s/base. */
const SERVICES = readdirSync(join(ROOT, "src/services")).sort();

function promtool(...args: string[]): { code: number | null; out: string } {
  const r = spawnSync(PROMTOOL, args, { encoding: "utf8", cwd: join(ROOT, "deploy/observability") });
  if (r.error)
    throw new Error(
      `${PROMTOOL} could not run (${r.error.message}): install Debian's prometheus package (.ci/run does), or set PROMTOOL`,
    );
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: any;
}

function objectsOf(text: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null);
}

/** base + components/monitoring in the shopstream namespace, as an overlay renders it (kubectl), else read directly. */
function renderWithMonitoring(): K8sObject[] {
  if (!kubectlFound) {
    const read = (dir: string): K8sObject[] => {
      const k = parseYaml(readFileSync(join(dir, "kustomization.yaml"), "utf8")) as { resources: string[] };
      return k.resources.flatMap((r) => objectsOf(readFileSync(join(dir, r), "utf8")));
    };
    return [...read(join(ROOT, "deploy/k8s/base")), ...read(COMPONENT)];
  }
  const dir = mkdtempSync(join(tmpdir(), "shopstream-monitoring-"));
  try {
    writeFileSync(
      join(dir, "kustomization.yaml"),
      [
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "namespace: shopstream",
        "resources:",
        `  - ${relative(dir, join(ROOT, "deploy/k8s/base"))}`,
        "components:",
        `  - ${relative(dir, COMPONENT)}`,
      ].join("\n"),
    );
    return objectsOf(
      execFileSync(KUBECTL, ["kustomize", dir], { encoding: "utf8", maxBuffer: 32 * 2 ** 20 }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const rules = readRules();
const alerts = rules.groups.flatMap((g) => g.rules).filter((r) => r.alert);

void describe("alert rules (deploy/observability/alerts.rules.yml)", () => {
  void it("pass promtool check rules", () => {
    const r = promtool("check", "rules", basename(RULES_FILE));
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, new RegExp(`SUCCESS: ${alerts.length} rules found`));
  });

  void it("pass their unit tests (promtool test rules alerts.test.yml)", () => {
    const r = promtool("test", "rules", basename(RULES_TEST_FILE));
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /SUCCESS/);
  });

  void it("unit tests that catch a wrong rule: a DLQ alert with a threshold of 5, and a breaker alert without `for`, fail them", (t) => {
    const dir = mkdtempSync(join(tmpdir(), "shopstream-rules-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    copyFileSync(RULES_TEST_FILE, join(dir, basename(RULES_TEST_FILE)));
    const text = readFileSync(RULES_FILE, "utf8");
    const wrong = text
      .replace("(shopstream_dlq_messages) > 0", "(shopstream_dlq_messages) > 5")
      .replace(/(alert: ShopStreamCircuitBreakerOpen[\s\S]*?)\n\s+for: 5m/, "$1");
    assert.notEqual(wrong, text);
    writeFileSync(join(dir, basename(RULES_FILE)), wrong);
    const r = spawnSync(PROMTOOL, ["test", "rules", basename(RULES_TEST_FILE)], {
      cwd: dir,
      encoding: "utf8",
    });
    const out = `${r.stdout}${r.stderr}`;
    assert.equal(r.status, 1, out);
    assert.match(out, /alertname: ShopStreamDeadLetters/);
    assert.match(out, /alertname: ShopStreamCircuitBreakerOpen/);
  });

  void it("cover the issue's six conditions, each alert with a severity, a summary and a runbook in docs/operations.md", () => {
    const names = alerts.map((a) => a.alert);
    for (const required of [
      "ShopStreamConsumerLagGrowing",
      "ShopStreamDeadLetters",
      "ShopStreamCircuitBreakerOpen",
      "ShopStreamOrderLatencyHigh",
      "ShopStreamOrdersNotConfirmed",
      "ShopStreamAuditChainBroken",
      "ShopStreamAuditChainUnverified",
    ])
      assert.ok(names.includes(required), `${required} in ${names.join(", ")}`);
    const ops = readFileSync(join(ROOT, "docs/operations.md"), "utf8");
    const headings = new Map(
      [...ops.matchAll(/^#{2,4} (.+)$/gm)].map((m) => [
        m[1]!
          .toLowerCase()
          .replace(/[^\w\- ]/g, "")
          .replace(/ /g, "-"),
        m.index,
      ]),
    );
    for (const a of alerts) {
      assert.match(a.labels?.["severity"] ?? "", /^(warning|critical)$/, `${a.alert}: severity`);
      assert.ok(a.annotations?.["summary"], `${a.alert}: summary`);
      const anchor = /^docs\/operations\.md#(.+)$/.exec(a.annotations?.["runbook_url"] ?? "")?.[1];
      assert.equal(anchor, a.alert!.toLowerCase(), `${a.alert}: runbook_url names its own section`);
      const at = headings.get(anchor);
      assert.ok(at !== undefined, `docs/operations.md has a section "${a.alert}"`);
      // The runbook says what it means, what to do and which console page shows it.
      const section = ops.slice(at, ops.indexOf("\n#", at + 1));
      for (const part of ["**Means**", "**Do**", "**Console**"])
        assert.ok(section.includes(part), `${a.alert}'s runbook has ${part}`);
    }
  });
});

void describe("PromQL metric names (scripts/monitoring.ts)", () => {
  void it("are the vector selectors' names, found by the PromQL grammar: not label values, functions or strings", () => {
    assert.deepEqual(
      metricNamesOf(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{status="b_total"}[5m]))) > 2 and on() ' +
          'label_replace(c, "d", "e_total", "", "") unless {__name__="f"} or time() - g offset 5m',
      ),
      ["a_bucket", "c", "f", "g"],
    );
  });

  void it("reject an expression that is not PromQL", () => {
    assert.throws(() => metricNamesOf("sum(rate(x[5m])"), PromQLSyntaxError);
    assert.throws(() => metricNamesOf("max by (a) b c"), PromQLSyntaxError);
  });

  void it("are matched against /metrics by family: a registered histogram offers _bucket, _sum, _count", () => {
    const exposed = exposedMetricNames(
      [
        "# HELP h_seconds x",
        "# TYPE h_seconds histogram",
        "# HELP c_total y",
        "# TYPE c_total counter",
        'c_total{a="1"} 3',
        "g 1",
      ].join("\n"),
    );
    for (const n of ["h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "c_total", "g"])
      assert.ok(exposed.has(n), n);
    assert.equal(exposed.has("h_seconds_total"), false);
  });
});

void describe("Grafana dashboard (deploy/observability/grafana-dashboard.json)", () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD_FILE, "utf8"));
  const queries = dashboardQueries(dashboard);

  void it("has queries that all parse, on a Prometheus data source chosen by a variable", () => {
    assert.ok(queries.length >= 10, `${queries.length} queries`);
    for (const q of queries) assert.doesNotThrow(() => metricNamesOf(q.expr), `${q.panel}: ${q.expr}`);
    assert.ok(
      dashboard.templating.list.some((v: any) => v.type === "datasource" && v.query === "prometheus"),
      "a datasource variable",
    );
  });

  void it("shows every metric the alert rules use (the same views)", () => {
    const shown = new Set(queries.flatMap((q) => metricNamesOf(q.expr)));
    for (const r of ruleQueries(rules))
      for (const m of metricNamesOf(r.expr))
        assert.ok(shown.has(m), `${r.rule} uses ${m}: not on the dashboard`);
  });
});

void describe(`kustomize component deploy/k8s/components/monitoring (${kubectlFound ? "kubectl kustomize with base" : "read without kubectl"})`, () => {
  const objects = renderWithMonitoring();
  const serviceMonitors = objects.filter((o) => o.kind === "ServiceMonitor");
  const prometheusRules = objects.filter((o) => o.kind === "PrometheusRule");

  void it("holds one ServiceMonitor and one PrometheusRule, valid against the Prometheus Operator's schemas", () => {
    assert.equal(serviceMonitors.length, 1);
    assert.equal(prometheusRules.length, 1);
    const monitoring = objects.filter(
      (o) => o.metadata.labels?.["app.kubernetes.io/component"] === "monitoring",
    );
    assert.deepEqual(monitoring.map((o) => o.kind).sort(), ["ConfigMap", "PrometheusRule", "ServiceMonitor"]);
    for (const o of [...serviceMonitors, ...prometheusRules]) {
      assert.equal(o.apiVersion, "monitoring.coreos.com/v1");
      if (kubectlFound) assert.equal(o.metadata.namespace, "shopstream");
      const Model = o.kind === "ServiceMonitor" ? ServiceMonitor : PrometheusRule;
      assert.doesNotThrow(() => new Model(o as never).validate(), `${o.kind}/${o.metadata.name}`);
    }
    // The schemas do reject a wrong object.
    const bad = structuredClone(serviceMonitors[0]!);
    bad.spec.endpoints[0].port = 8080;
    assert.throws(() => new ServiceMonitor(bad as never).validate(), /port/);
  });

  void it("the ServiceMonitor scrapes /metrics on the http port of exactly the five services", () => {
    const sm = serviceMonitors[0]!;
    const match = sm.spec.selector.matchLabels as Record<string, string>;
    const selected = objects
      .filter((o) => o.kind === "Service")
      .filter((o) => Object.entries(match).every(([k, v]) => o.metadata.labels?.[k] === v));
    assert.deepEqual(selected.map((s) => s.metadata.name).sort(), SERVICES);
    for (const s of selected)
      assert.ok(
        s.spec.ports.some((p: { name?: string }) => p.name === sm.spec.endpoints[0].port),
        `${s.metadata.name} has a port named ${sm.spec.endpoints[0].port}`,
      );
    assert.equal(sm.spec.endpoints[0].path, "/metrics");
  });

  void it("the dashboard's ConfigMap carries deploy/observability/grafana-dashboard.json for Grafana's sidecar, as `npm run k8s:monitoring` writes it", async () => {
    const cm = objects.find(
      (o) => o.kind === "ConfigMap" && o.metadata.name === "shopstream-grafana-dashboard",
    )!;
    assert.doesNotThrow(() => new ConfigMap(cm).validate());
    assert.equal(cm.metadata.labels?.["grafana_dashboard"], "1");
    const data = (cm as unknown as { data: Record<string, string> }).data;
    assert.deepEqual(JSON.parse(data["shopstream.json"]!), JSON.parse(readFileSync(DASHBOARD_FILE, "utf8")));
    const expected = await format(dashboardConfigMapOf(readFileSync(DASHBOARD_FILE, "utf8")), {
      parser: "yaml",
      filepath: DASHBOARD_CONFIGMAP_FILE,
    });
    assert.equal(
      readFileSync(DASHBOARD_CONFIGMAP_FILE, "utf8"),
      expected,
      "deploy/k8s/components/monitoring/grafana-dashboard.yaml is stale: run npm run k8s:monitoring",
    );
  });

  void it("the PrometheusRule is the rule file's groups, as `npm run k8s:monitoring` writes it", async () => {
    assert.deepEqual(prometheusRules[0]!.spec.groups, rules.groups);
    const expected = await format(prometheusRuleOf(readFileSync(RULES_FILE, "utf8")), {
      parser: "yaml",
      filepath: PROMETHEUS_RULE_FILE,
    });
    assert.equal(
      readFileSync(PROMETHEUS_RULE_FILE, "utf8"),
      expected,
      "deploy/k8s/components/monitoring/prometheus-rule.yaml is stale: run npm run k8s:monitoring",
    );
  });
});
