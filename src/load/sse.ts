/**
 * A minimal reader of `text/event-stream` bodies (the WHATWG Server-Sent Events format: `field: value` lines, a blank
 * line ends a message, lines starting with `:` are comments), for the load generator and the tests that follow
 * `GET /orders/{id}/events`. Only what ShopStream sends is interpreted: `id`, `event`, `data` (several joined by
 * newlines) and `retry`; comments are reported so heartbeats can be counted.
 */

/** One item of an event stream: a message, or a comment line. */
export type SseItem =
  | { kind: "message"; id: string | undefined; event: string; data: string }
  | { kind: "comment"; text: string }
  | { kind: "retry"; ms: number };

/** Reads the items of an event stream body as they arrive; ends when the body ends. */
export async function* readSse(body: AsyncIterable<Uint8Array | string>): AsyncGenerator<SseItem> {
  const decoder = new TextDecoder();
  let buffer = "";
  let id: string | undefined;
  let event = "message";
  let data: string[] = [];
  for await (const chunk of body) {
    buffer += typeof chunk === "string" ? chunk : decoder.decode(chunk, { stream: true });
    for (;;) {
      const nl = buffer.search(/\r\n|\r|\n/);
      if (nl < 0) break;
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (data.length > 0) yield { kind: "message", id, event, data: data.join("\n") };
        data = [];
        event = "message";
        continue;
      }
      if (line.startsWith(":")) {
        yield { kind: "comment", text: line.slice(1).trim() };
        continue;
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "retry" && /^\d+$/.test(value)) yield { kind: "retry", ms: Number(value) };
    }
  }
}
