import type { DirectMsgRequest, JetStreamManager, StoredMsg } from "@nats-io/jetstream";

/**
 * A direct get (any replica answers) that resolves null when there is no such message: nats.js 3 answers
 * "not found" with null, other versions and some servers with an error (JetStream code 10037 or status 404).
 * Any other failure is thrown.
 */
export async function directGet(
  jsm: JetStreamManager,
  stream: string,
  query: DirectMsgRequest,
): Promise<StoredMsg | null> {
  try {
    return await jsm.direct.getMessage(stream, query);
  } catch (err) {
    const e = err as { code?: number; status?: number; message?: string };
    if (e?.code === 10037 || e?.status === 404 || /not found/i.test(e?.message ?? "")) return null;
    throw err;
  }
}
