// The public API, called with the key of this tab's session. Nothing else talks to the server.

const STORAGE_KEY = "agenthook.apiKey";

export const session = {
  key() {
    return sessionStorage.getItem(STORAGE_KEY);
  },
  signIn(key) {
    sessionStorage.setItem(STORAGE_KEY, key);
  },
  signOut() {
    sessionStorage.removeItem(STORAGE_KEY);
  },
};

/** An answer other than 2xx, in the API's error shape when it had one. */
export class ApiError extends Error {
  constructor(status, body) {
    const message =
      body && typeof body.error === "string" ? body.error : `the server answered ${status}`;
    super(message);
    this.status = status;
    this.code = body && typeof body.code === "string" ? body.code : null;
    this.details = body && typeof body.details === "string" ? body.details : null;
  }
}

/** Raised when the key is refused: the page goes back to the sign-in form. */
export const unauthorized = new EventTarget();

/** "reachable" or "unreachable" after each request, for the indicator in the top bar. */
export const connection = new EventTarget();

/**
 * `method path` with the session's key; the parsed JSON answer. `key` overrides the session's
 * (the sign-in check uses it before storing anything).
 */
export async function api(path, { method = "GET", body, key } = {}) {
  const token = key ?? session.key();
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (e) {
    connection.dispatchEvent(new Event("unreachable"));
    throw new ApiError(0, { error: "the server could not be reached", details: String(e) });
  }
  connection.dispatchEvent(new Event("reachable"));
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const error = new ApiError(res.status, data);
    if (res.status === 401 && key === undefined) {
      unauthorized.dispatchEvent(new Event("unauthorized"));
    }
    throw error;
  }
  return data;
}

/** A path with its variable parts escaped. */
export function path(strings, ...values) {
  return strings.reduce(
    (out, s, i) => out + s + (i < values.length ? encodeURIComponent(values[i]) : ""),
    "",
  );
}

/** `?a=1&b=2` from the defined entries of `params`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
