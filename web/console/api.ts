/** The console API from the browser: the operator's token in the Authorization header, problems as errors. */

const TOKEN_KEY = "shopstream-console-token";

/** The signed-in token (kept in this tab's sessionStorage only). */
export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t: string | null): void {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Takes a token from the URL fragment (`#token=…`, the link `npm start` prints) and removes it from the address bar. */
export function tokenFromFragment(): void {
  const m = /(?:^#|&)token=([A-Za-z0-9._~+/=-]+)/.exec(location.hash);
  if (m?.[1]) {
    setToken(m[1]);
    history.replaceState(null, "", `${location.pathname}#/overview`);
  }
}

/** A problem+json answer (or a network failure). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Calls the console API; throws {@link ApiError} on a non-2xx answer. */
export async function api<T>(path: string, init: { method?: string; body?: unknown } = {}): Promise<T> {
  const headers: Record<string, string> = { authorization: `Bearer ${token() ?? ""}` };
  if (init.body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method: init.method ?? "GET",
    headers,
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* text */
  }
  if (!res.ok) {
    const detail = (body as { detail?: string } | null)?.detail ?? text;
    throw new ApiError(res.status, `${res.status}: ${detail}`);
  }
  return body as T;
}

/**
 * Follows a Server-Sent Events stream over fetch (EventSource cannot send the Authorization header); reconnects after
 * a second until `signal` aborts.
 */
export async function follow(
  path: string,
  onEvent: (data: string) => void,
  signal: AbortSignal,
): Promise<void> {
  while (!signal.aborted) {
    try {
      const res = await fetch(path, { headers: { authorization: `Bearer ${token() ?? ""}` }, signal });
      if (!res.ok || !res.body) throw new ApiError(res.status, `stream: ${res.status}`);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i: number;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block
            .split("\n")
            .filter((l) => l.startsWith("data: "))
            .map((l) => l.slice(6))
            .join("\n");
          if (data) onEvent(data);
        }
      }
    } catch {
      if (signal.aborted) return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}
