// The console's only way to the server: the public REST API with the operator's JWT.
//
// The session (token, name, permissions) lives in this module's variable and nowhere else: no
// localStorage, sessionStorage, cookie or IndexedDB. A reload loses it and asks again; logout
// drops it. A 401 on any call ends it and sends the operator back to the login form.

let session = null;
let onExpired = () => {};

/** An API error carrying the problem+json `detail` (or a fixed text). */
export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.status = status;
    this.body = body;
  }
}

/** Registers what happens when the server refuses the session (401). */
export function whenExpired(fn) {
  onExpired = fn;
}

/** The signed-in operator, or null. */
export function current() {
  return session ? {name: session.name, permissions: [...session.permissions], expiresAt: session.expiresAt} : null;
}

/** Whether the session holds a permission (implied ones are listed by the server). */
export function can(permission) {
  return !!session && session.permissions.includes(permission);
}

/** POST /v1/auth/login; keeps the token in memory. */
export async function login(username, password) {
  const resp = await fetch('/v1/auth/login', {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({username, password}),
    credentials: 'omit',
    cache: 'no-store',
  });
  const body = await readBody(resp);
  if (!resp.ok) throw new ApiError(resp.status, problemText(resp, body), body);
  session = {
    token: body.access_token,
    name: username,
    permissions: Array.isArray(body.permissions) ? body.permissions : [],
    expiresAt: body.expires_at,
  };
  return current();
}

/** Forgets the session. */
export function logout() {
  session = null;
}

/**
 * Calls the API. `opts`: {method, body (JSON value), headers, text: true for a text answer,
 * auth: false for public routes}. Resolves to {status, body, headers}; rejects with ApiError.
 */
export async function call(path, opts = {}) {
  const headers = {...(opts.headers || {})};
  if (opts.auth !== false) {
    if (!session) throw new ApiError(401, 'Not signed in.');
    headers.Authorization = `Bearer ${session.token}`;
  }
  let body;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let resp;
  try {
    resp = await fetch(path, {method: opts.method || 'GET', headers, body, credentials: 'omit', cache: 'no-store'});
  } catch (e) {
    throw new ApiError(0, `The server did not answer (${e.message}).`);
  }
  const data = opts.text && resp.ok ? await resp.text() : await readBody(resp);
  if (resp.status === 401 && opts.auth !== false) {
    session = null;
    onExpired(problemText(resp, data));
    throw new ApiError(401, 'Your session has ended: sign in again.', data);
  }
  if (!resp.ok) throw new ApiError(resp.status, problemText(resp, data), data);
  return {status: resp.status, body: data, headers: resp.headers};
}

/** GET returning the body. */
export async function get(path, opts) {
  return (await call(path, opts)).body;
}

/**
 * Whether an object exists (GET answers 200; 404 = no). Create forms ask first, since not every
 * PUT route honours `If-None-Match: *` and a create must never silently replace.
 */
export async function exists(path) {
  try {
    await call(path);
    return true;
  } catch (e) {
    if (e.status === 404) return false;
    throw e;
  }
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** A path segment, encoded. */
export function seg(id) {
  return encodeURIComponent(id);
}

async function readBody(resp) {
  if (resp.status === 204) return null;
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function problemText(resp, body) {
  if (body && typeof body === 'object' && typeof body.detail === 'string') return body.detail;
  return `${resp.status} ${resp.statusText || 'error'}`;
}
