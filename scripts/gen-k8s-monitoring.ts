/**
 * `npm run k8s:monitoring`: writes deploy/k8s/components/monitoring/prometheus-rule.yaml, the PrometheusRule whose
 * groups are those of deploy/observability/alerts.rules.yml (the one source of the alert rules, which promtool checks
 * and tests). test/unit/observability.test.ts fails when the object and the file differ.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { format } from "prettier";
import { PROMETHEUS_RULE_FILE, RULES_FILE, prometheusRuleOf } from "./monitoring.js";

const text = prometheusRuleOf(readFileSync(RULES_FILE, "utf8"));
writeFileSync(
  PROMETHEUS_RULE_FILE,
  await format(text, { parser: "yaml", filepath: "deploy/k8s/components/monitoring/prometheus-rule.yaml" }),
);
process.stdout.write(
  "deploy/k8s/components/monitoring/prometheus-rule.yaml: written from deploy/observability/alerts.rules.yml\n",
);
