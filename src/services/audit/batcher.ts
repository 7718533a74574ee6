/**
 * Group commit: callers add items one at a time and get a promise; items are written together, up to
 * `maxBatch` at once, at most `maxDelayMs` after the first of them arrived, one batch at a time. While a
 * batch is being written the next one fills, so under load batches grow by themselves and at low load an
 * item waits at most `maxDelayMs`.
 */

/** Options for {@link Batcher}. */
export interface BatcherOptions<I, O> {
  /** Largest batch. */
  maxBatch: number;
  /** Longest an item waits for others before its batch is written. */
  maxDelayMs: number;
  /**
   * Writes one batch. Resolves with one settled result per item, in order (so one bad item can fail
   * alone); a rejection fails every item of the batch with that error.
   */
  write: (items: I[]) => Promise<PromiseSettledResult<O>[]>;
}

interface Waiter<I, O> {
  item: I;
  resolve: (o: O) => void;
  reject: (err: unknown) => void;
}

/** The batcher was closed: no more items are accepted. */
export class BatcherClosedError extends Error {
  override readonly name = "BatcherClosedError";
}

export class Batcher<I, O> {
  readonly #o: BatcherOptions<I, O>;
  #queue: Waiter<I, O>[] = [];
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> | undefined;
  #closed = false;

  constructor(opts: BatcherOptions<I, O>) {
    if (!(opts.maxBatch >= 1)) throw new RangeError("maxBatch must be at least 1");
    this.#o = { ...opts, maxDelayMs: Math.max(0, opts.maxDelayMs) };
  }

  /** Items waiting for a batch (not counting the one being written). */
  get queued(): number {
    return this.#queue.length;
  }

  /** Queues an item; resolves or rejects once its batch was written. */
  add(item: I): Promise<O> {
    if (this.#closed) return Promise.reject(new BatcherClosedError("batcher closed"));
    return new Promise<O>((resolve, reject) => {
      this.#queue.push({ item, resolve, reject });
      this.#schedule();
    });
  }

  /** Writes what is queued, waits for every write, then refuses new items. */
  async close(): Promise<void> {
    this.#closed = true;
    while (this.#writing || this.#queue.length > 0) {
      if (!this.#writing) this.#startWrite();
      await this.#writing;
    }
  }

  #schedule(): void {
    if (this.#writing) return; // the running write picks the queue up when it ends
    if (this.#queue.length >= this.#o.maxBatch) {
      this.#startWrite();
    } else if (this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        if (!this.#writing && this.#queue.length > 0) this.#startWrite();
      }, this.#o.maxDelayMs);
    }
  }

  #startWrite(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    const batch = this.#queue.splice(0, this.#o.maxBatch);
    this.#writing = this.#write(batch).finally(() => {
      this.#writing = undefined;
      // Items that arrived meanwhile have waited a whole write already: go at once.
      if (this.#queue.length > 0) this.#startWrite();
    });
  }

  async #write(batch: Waiter<I, O>[]): Promise<void> {
    let results: PromiseSettledResult<O>[];
    try {
      results = await this.#o.write(batch.map((w) => w.item));
      if (results.length !== batch.length)
        throw new Error(`batch writer returned ${results.length} results for ${batch.length} items`);
    } catch (err) {
      for (const w of batch) w.reject(err);
      return;
    }
    batch.forEach((w, i) => {
      const r = results[i]!;
      if (r.status === "fulfilled") w.resolve(r.value);
      else w.reject(r.reason);
    });
  }
}
