/**
 * Default HTTP ports, in one place. Each is overridable by the process's `PORT` variable; the local
 * stack passes them on, and the README and Kubernetes manifests use the same numbers.
 */
export const defaultPorts = {
  orders: 8080,
  inventory: 8081,
  payments: 8082,
  notifications: 8083,
  audit: 8084,
  console: 8085,
  "payment-gateway": 9090,
  "mail-provider": 9091,
} as const;
export type ProcessName = keyof typeof defaultPorts;
