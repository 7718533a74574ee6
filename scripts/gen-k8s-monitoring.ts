/**
 * `npm run k8s:monitoring`: writes deploy/k8s/components/monitoring/prometheus-rule.yaml, the PrometheusRule whose
 * groups are those of deploy/observability/alerts.rules.yml (the one source of the alert rules, which promtool checks
 * and tests), and grafana-dashboard.yaml, the ConfigMap carrying deploy/observability/grafana-dashboard.json.
 * test/unit/observability.test.ts fails when the objects and the files differ.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { format } from "prettier";
import {
  DASHBOARD_CONFIGMAP_FILE,
  DASHBOARD_FILE,
  PROMETHEUS_RULE_FILE,
  RULES_FILE,
  dashboardConfigMapOf,
  prometheusRuleOf,
} from "./monitoring.js";

const text = prometheusRuleOf(readFileSync(RULES_FILE, "utf8"));
writeFileSync(
  PROMETHEUS_RULE_FILE,
  await format(text, { parser: "yaml", filepath: "deploy/k8s/components/monitoring/prometheus-rule.yaml" }),
);
writeFileSync(
  DASHBOARD_CONFIGMAP_FILE,
  await format(dashboardConfigMapOf(readFileSync(DASHBOARD_FILE, "utf8")), {
    parser: "yaml",
    filepath: "deploy/k8s/components/monitoring/grafana-dashboard.yaml",
  }),
);
process.stdout.write(
  "deploy/k8s/components/monitoring/prometheus-rule.yaml: written from deploy/observability/alerts.rules.yml\n" +
    "deploy/k8s/components/monitoring/grafana-dashboard.yaml: written from deploy/observability/grafana-dashboard.json\n",
);
