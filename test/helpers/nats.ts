/**
 * Test-facing access to real `nats-server` processes: the launcher from `src/stack/nats-server.ts` plus
 * {@link connectTo}, a client connection tuned for tests that restart or kill servers mid-test.
 */
import { type NatsConnection, type NodeConnectionOptions, connect } from "@nats-io/transport-node";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { authOptions } from "../../src/lib/messaging/connection.js";
import type { NatsUser } from "../../src/lib/messaging/permissions.js";
import { installNatsTuning } from "../../src/lib/messaging/nats-tuning.js";
import { ensureNatsSecrets, type NatsSecrets } from "../../src/stack/nats-auth.js";
import {
  NatsCluster,
  NatsServer,
  startNatsServer,
  type NatsServerOptions,
} from "../../src/stack/nats-server.js";

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

/** A nats-server with authentication: the users and permissions of src/lib/messaging/permissions.ts. */
export interface AuthNatsServer {
  server: NatsServer;
  secrets: NatsSecrets;
  /** A connection as `user` (its inbox prefix included), like {@link connectTo}. */
  connectAs(user: NatsUser, opts?: Partial<NodeConnectionOptions>): Promise<NatsConnection>;
  /** Stops the server and removes its store and secrets. */
  cleanup(): Promise<void>;
}

/**
 * Starts nats-server with the configuration `npm start` generates (one user per service, admin, operator; fresh
 * passwords under a temp dir's `secrets/`). Servers started with {@link startNatsServer} stay without authentication.
 */
export async function startAuthNatsServer(opts: NatsServerOptions = {}): Promise<AuthNatsServer> {
  const dir = await mkdtemp(join(tmpdir(), "nats-auth-"));
  const secrets = await ensureNatsSecrets(dir);
  const server = await startNatsServer({ ...opts, configFile: secrets.configFile });
  return {
    server,
    secrets,
    connectAs: (user, o = {}) => connectTo(server, { ...authOptions(secrets.auth(user)), ...o }),
    async cleanup() {
      await server.cleanup();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
