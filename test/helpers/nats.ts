/**
 * Test-facing access to real `nats-server` processes: the launcher from `src/stack/nats-server.ts` plus
 * {@link connectTo}, a client connection tuned for tests that restart or kill servers mid-test.
 */
import { type NatsConnection, type NodeConnectionOptions, connect } from "@nats-io/transport-node";
import { installNatsTuning } from "../../src/lib/messaging/nats-tuning.js";
import { NatsCluster, NatsServer } from "../../src/stack/nats-server.js";

export {
  DEFAULT_NATS_SERVER_LOCATIONS,
  NatsCluster,
  NatsServer,
  NatsServerError,
  NatsServerNotFoundError,
  OUTPUT_RING_SIZE,
  PORT_ATTEMPTS,
  findNatsServerBinary,
  freePort,
  portsInUse,
  startNatsCluster,
  startNatsServer,
} from "../../src/stack/nats-server.js";
export type {
  FindNatsServerOptions,
  NatsClusterOptions,
  NatsServerClusterOptions,
  NatsServerExit,
  NatsServerOptions,
  NatsServerSettings,
  PortPicker,
} from "../../src/stack/nats-server.js";

/**
 * A client connection to a test server, a cluster, or explicit URLs, that never gives up reconnecting.
 *
 * Defaults: `maxReconnectAttempts: -1`, `reconnectTimeWait: 100` ms, no reconnect jitter, a short `timeout` for
 * the initial connect; anything in `opts` overrides them. The caller must `close()` (or `drain()`) it.
 */
export function connectTo(
  target: NatsServer | NatsCluster | string | readonly string[],
  opts: Partial<NodeConnectionOptions> = {},
): Promise<NatsConnection> {
  const servers =
    target instanceof NatsServer
      ? [target.url]
      : target instanceof NatsCluster
        ? target.urls
        : typeof target === "string"
          ? [target]
          : [...target];
  // The services' client tuning (connectNats installs it), so the suites test what production runs.
  installNatsTuning();
  return connect({
    servers,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 100,
    reconnectJitter: 0,
    timeout: 5_000,
    ...opts,
  });
}
