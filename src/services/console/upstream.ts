/**
 * The console's reads of the other services' HTTP APIs. Each call carries the console caller's own bearer token (an
 * operator's): the console holds no credential of its own for them, and each service enforces its own rules.
 */

/** What one upstream read gave: its status and JSON body, or why it failed. */
export type Part<T = unknown> =
  { ok: true; status: number; body: T } | { ok: false; status: number; error: string };

/** GETs (or PUTs) `url` with `authorization`; never throws: a failure is a part with `ok: false`. */
export async function upstream<T = unknown>(
  url: string,
  authorization: string | undefined,
  init: { method?: string; body?: unknown } = {},
): Promise<Part<T>> {
  try {
    const res = await fetch(url, {
      method: init.method ?? "GET",
      headers: {
        ...(authorization ? { authorization } : {}),
        ...(init.body !== undefined ? { "content-type": "application/json" } : {}),
      },
      ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
      signal: AbortSignal.timeout(5_000),
    });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      /* kept as text */
    }
    if (res.ok) return { ok: true, status: res.status, body: body as T };
    const detail = typeof body === "object" && body !== null && "detail" in body ? String(body.detail) : text;
    return { ok: false, status: res.status, error: detail.slice(0, 500) };
  } catch (err) {
    return { ok: false, status: 0, error: err instanceof Error ? err.message : String(err) };
  }
}
