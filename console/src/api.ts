/**
 * The console's only link to the server: the admin API (/api/...) and the OAuth endpoints, on
 * this origin. The admin token lives in this module's memory only: never in localStorage,
 * sessionStorage, a cookie or a URL, so closing or reloading the tab forgets it.
 */
let adminToken: string | undefined;
const listeners = new Set<() => void>();

export function isSignedIn(): boolean {
  return adminToken !== undefined;
}

export function onSignOut(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function signOut(): void {
  adminToken = undefined;
  for (const listener of listeners) listener();
}

/** An admin API refusal, with a sentence a person can act on. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code?: string,
    readonly details?: { path: string; message: string }[],
  ) {
    super(message);
  }
}

export interface ApiAnswer<T> {
  data: T;
  headers: Headers;
  /** The ETag of what was read, when the server gives one: sent back as If-Match on writes. */
  etag?: string;
}

type ErrorBody = { error?: string; error_description?: string; details?: { path: string; message: string }[] };

function describe(status: number, body: ErrorBody | undefined): string {
  if (status === 401) return 'The admin token was refused. Check it and sign in again.';
  if (status === 412) return 'This was changed by someone else since you opened it. Reload it and make your changes again.';
  const description = body?.error_description ?? `the server answered ${status}`;
  if (body?.details?.length) {
    return `${capitalize(description)}: ${body.details.map((detail) => `${detail.path || 'body'}: ${detail.message}`).join('; ')}.`;
  }
  return `${capitalize(description)}.`;
}

const capitalize = (text: string) => text.charAt(0).toUpperCase() + text.slice(1);

async function send(path: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(path, { ...init, cache: 'no-store', credentials: 'omit', redirect: 'error' });
  } catch {
    throw new ApiError(0, 'The token authority cannot be reached. Check that it is running, then try again.');
  }
}

async function readBody(response: Response): Promise<unknown> {
  const text = await response.text();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** One admin API call with the token from memory; throws ApiError with a readable message. */
export async function admin<T>(method: string, path: string, body?: unknown, options: { ifMatch?: string } = {}): Promise<ApiAnswer<T>> {
  if (adminToken === undefined) throw new ApiError(401, 'Sign in first.');
  return adminWith<T>(adminToken, method, path, body, options);
}

async function adminWith<T>(
  token: string,
  method: string,
  path: string,
  body: unknown,
  options: { ifMatch?: string } = {},
): Promise<ApiAnswer<T>> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (options.ifMatch) headers['if-match'] = options.ifMatch;
  const response = await send(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await readBody(response);
  if (!response.ok) {
    const errorBody = typeof data === 'object' && data !== null ? (data as ErrorBody) : undefined;
    const error = new ApiError(response.status, describe(response.status, errorBody), errorBody?.error, errorBody?.details);
    // A token that stops working (changed on the server) ends the session.
    if (response.status === 401 && token === adminToken) signOut();
    throw error;
  }
  return { data: data as T, headers: response.headers, etag: response.headers.get('etag') ?? undefined };
}

/** Checks the token against the admin API and keeps it in memory only if it is accepted. */
export async function signIn(token: string): Promise<void> {
  await adminWith(token, 'GET', '/api/apikeys?limit=1', undefined);
  adminToken = token;
}

/** A GET that may not exist on this server (optional endpoints): undefined on 404 or 405. */
export async function adminOptional<T>(path: string): Promise<ApiAnswer<T> | undefined> {
  try {
    return await admin<T>('GET', path);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 405)) return undefined;
    throw error;
  }
}

export const TOKEN_PATH = '/.well-known/otoroshi/oauth/token';
export const JWKS_PATH = '/.well-known/otoroshi/oauth/jwks.json';

/** A public OAuth endpoint (no admin token): the answer's status and body as text. */
export async function publicCall(path: string, init: RequestInit = {}): Promise<{ status: number; text: string }> {
  const response = await send(path, init);
  return { status: response.status, text: await response.text() };
}

// --- The admin API's shapes (Otoroshi's field names) ---

export interface ApiKey {
  clientId: string;
  clientName: string;
  description: string;
  authorizedEntities: string[];
  enabled: boolean;
  validUntil: number | null;
  metadata: Record<string, string>;
  tags: string[];
  scope: string[];
  allowClientIdOnly: boolean;
  rotation: { enabled: boolean; rotationEvery: number; gracePeriod: number };
  throttlingQuota: number;
  dailyQuota: number;
  monthlyQuota: number;
  createdAt: number;
  updatedAt: number;
  previousSecretValidUntil?: number;
  clientSecret?: string;
  /** RFC 7591: the client's public keys for private_key_jwt, or where they are fetched from. */
  jwks?: { keys: Record<string, unknown>[] };
  jwks_uri?: string;
  /** How its access tokens are bound: absent or bearer (Otoroshi), dpop (RFC 9449), mtls (RFC 8705). */
  tokenBinding?: TokenBinding;
  /** RFC 8705 tls_client_auth: the one certificate attribute the client's certificate must have. */
  tls_client_auth_subject_dn?: string;
  tls_client_auth_san_dns?: string;
  tls_client_auth_san_uri?: string;
  tls_client_auth_san_ip?: string;
  tls_client_auth_san_email?: string;
}

export type TokenBinding = 'bearer' | 'dpop' | 'mtls';

export interface KeyPairVersion {
  kid: string;
  /** pending: published ahead of a scheduled rotation, signs from activatesAt. */
  status: 'pending' | 'active' | 'retired';
  createdAt: number;
  activatesAt: number | null;
  retiredAt: number | null;
  verifyUntil: number | null;
}

/** A key pair's rotation schedule, in seconds. */
export interface KeyRotation {
  rotateEvery: number;
  publishAhead: number;
  leeway: number;
}

export interface KeyPair {
  id: string;
  algorithm: string;
  description: string;
  createdAt: number;
  status: 'active' | 'retired';
  activeKid: string | null;
  rotation: KeyRotation | null;
  nextRotation: { publishAt: number; switchAt: number; kid: string | null } | null;
  versions: KeyPairVersion[];
}

export interface AuditEntry {
  id: string | number;
  at: number | string;
  actor: string;
  action: string;
  entity: string;
  entityId: string;
  /** The created or deleted entity, or the changed fields as {field: {before, after}} (secrets redacted). */
  change?: unknown;
}

/** A page of a list: the admin API answers a JSON array with an RFC 8288 Link, or {items, next}. */
export async function listPage<T>(path: string): Promise<{ items: T[]; next?: string }> {
  const { data, headers } = await admin<T[] | { items: T[]; next?: string | null }>('GET', path);
  if (!Array.isArray(data)) return { items: data.items, next: data.next ?? undefined };
  const link = headers.get('link') ?? '';
  const next = /<([^>]*)>\s*;\s*rel="next"/.exec(link)?.[1];
  return { items: data, next: next ? (new URL(next, location.origin).searchParams.get('after') ?? undefined) : undefined };
}

export const SIGN_KEYPAIR_METADATA = 'jwt-sign-keypair';

/** A route (libs/core/routes.ts): what Envoy serves, and its API key policy. */
export interface Route {
  id: string;
  name: string;
  description: string;
  enabled: boolean;
  frontend: { domains: string[]; pathPrefix: string };
  backend: {
    targets: { hostname: string; port: number; tls: boolean; weight: number }[];
    connectTimeoutMs: number;
    requestTimeoutMs: number;
  };
  apikeys: {
    enabled: boolean;
    extractors: string[];
    authorizedEntities: string[];
    requiredScopes: string[];
    audiences: string[];
    stripCredential: boolean;
    clientIdHeader: string;
    clientSecretHeader: string;
    quotas: boolean;
    quotaFailure: 'open' | 'closed';
    publicPathPrefixes: string[];
  };
  metadata: Record<string, string>;
  createdAt: string;
  updatedAt: string;
  /** What the authority's Envoys made of it (GET only, when the authority is their xDS control plane). */
  status?: { xds: RouteXdsStatus };
}

/** status.xds of a route (libs/xds/route-status.ts). */
export interface RouteXdsStatus {
  state: 'accepted' | 'rejected' | 'pending';
  envoys: number;
  error?: string;
  message?: string;
  type?: string;
  node?: string;
  at?: string;
}
