import type { NatsConnection } from "@nats-io/transport-node";
import { NonRetryableError } from "../errors.js";

/**
 * Who creates streams, consumers and KV buckets. `create`: the service itself at start-up, as without
 * authentication (every test that starts a plain nats-server). `verify`: a service connected with its own restricted
 * user may not administer JetStream, so it only checks (INFO) that what it declares exists and matches, and fails
 * naming the missing object and {@link PROVISION_COMMAND}; provisioning runs with the `admin` user.
 */
export type ProvisioningMode = "create" | "verify";

/** What provisions a missing stream, consumer or bucket. */
export const PROVISION_COMMAND = "npm run provision (with the NATS admin credential)";

const modes = new WeakMap<NatsConnection, ProvisioningMode>();

/** Sets how code using `nc` treats missing JetStream objects (default `create`). */
export function setProvisioningMode(nc: NatsConnection, mode: ProvisioningMode): void {
  modes.set(nc, mode);
}

/** How code using `nc` treats missing JetStream objects. */
export function provisioningMode(nc: NatsConnection): ProvisioningMode {
  return modes.get(nc) ?? "create";
}

/** A declared stream, consumer or KV bucket is missing and this process may not create it. */
export class NotProvisionedError extends NonRetryableError {
  override readonly name = "NotProvisionedError";
  constructor(what: string) {
    super(
      "NOT_PROVISIONED",
      `${what} does not exist and this service's NATS user may not create it: run ${PROVISION_COMMAND}`,
      { status: 500 },
    );
  }
}
