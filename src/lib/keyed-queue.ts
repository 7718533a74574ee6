/**
 * Runs async work one at a time per key, in call order; work of different keys runs concurrently. A key's next
 * piece of work starts once the previous one has settled (resolved or rejected); idle keys take no memory.
 *
 * Used to send conditional writes of one KV key or one subject from one process one at a time: on nats-server
 * before 2.9.21 a clustered stream checks a write's expected sequence only against what its leader has already
 * applied, so two concurrent compare-and-sets of one key could both succeed (nats-io/nats-server#4320). Sent one
 * after the other, the second sees the first and fails as a conflict. Elsewhere it only saves lost races (e.g.
 * the inventory runs every handler of one order through one, keyed by order id).
 */
export class KeyedQueue {
  readonly #tails = new Map<string, Promise<void>>();

  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve();
    const result = previous.then(work);
    const tail = result.then(
      () => undefined,
      () => undefined,
    );
    this.#tails.set(key, tail);
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return result;
  }
}
