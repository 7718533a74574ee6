/**
 * Starting something on free ports without a port race: a port chosen with {@link freePort} is only free until
 * someone binds it, and in between any other process (an outgoing connection, too) may take it. Whoever starts
 * something on such ports must notice "address already in use" and start again on fresh ones: {@link onFreshPorts}.
 *
 * (The nats-server launchers do this themselves; this is for everything else that gets picked ports: the stack's
 * processes in the tests and the benchmark.)
 */
import { PORT_ATTEMPTS, type PortPicker, freePort } from "./nats-server.js";

/**
 * Thrown by the `start` function of {@link onFreshPorts} to say that it failed only because `port`, one of the
 * ports it was given, was taken before it could bind it; it must have cleaned up what it started.
 */
export class PortTakenError extends Error {
  override readonly name: string = "PortTakenError";

  constructor(
    /** The port that was taken. */
    readonly port: number,
    /** What said so (e.g. the process's output), for the final error. */
    readonly detail: string,
  ) {
    super(`port ${port} was taken before it could be bound: ${detail}`);
  }
}

/**
 * The first of `ports` that `text` says could not be listened on because it was in use, or undefined. A line counts
 * when it mentions `EADDRINUSE`, `address already in use` (Node.js, nats-server) or `is already in use` (the
 * stack's own port check) together with the port.
 */
export function takenPortIn(text: string, ports: Iterable<number>): number | undefined {
  const wanted = new Set(ports);
  for (const line of text.split("\n")) {
    if (!/EADDRINUSE|already in use/.test(line)) continue;
    for (const m of line.matchAll(/(?<![\d.])(\d{1,5})(?!\d)/g)) {
      const port = Number(m[1]);
      if (wanted.has(port)) return port;
    }
  }
  return undefined;
}

/**
 * Calls `start` with `count` distinct ports from `pickPort` (default {@link freePort}) and resolves with its result.
 * When `start` rejects with a {@link PortTakenError} (one of the ports was taken between choice and bind), it is
 * called again with fresh ports, at most {@link PORT_ATTEMPTS} times in all; then this rejects with an error saying
 * so. Any other rejection is passed on at once.
 */
export async function onFreshPorts<T>(
  count: number,
  start: (ports: number[]) => Promise<T>,
  opts: { pickPort?: PortPicker; host?: string } = {},
): Promise<T> {
  const pick = opts.pickPort ?? freePort;
  const host = opts.host ?? "127.0.0.1";
  for (let attempt = 1; ; attempt++) {
    const ports: number[] = [];
    for (let tries = 0; ports.length < count; tries++) {
      const port = await pick(host);
      if (!ports.includes(port)) ports.push(port);
      else if (tries > 20 * count) throw new Error(`the port picker keeps returning the same ports`);
    }
    try {
      return await start(ports);
    } catch (err) {
      if (!(err instanceof PortTakenError)) throw err;
      if (attempt >= PORT_ATTEMPTS) {
        throw new Error(
          `could not start after ${PORT_ATTEMPTS} attempts: each time a port picked for it (last: ${err.port}) was taken before it could be bound; last time: ${err.detail}`,
          { cause: err },
        );
      }
    }
  }
}
