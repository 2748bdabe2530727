/**
 * OAuth2 errors as the core throws them. Transports translate them: REST to the
 * RFC 6749 §5.2 JSON body, gRPC to a status code (later). The core never throws
 * framework exceptions.
 */
export type OAuthErrorCode =
  | 'invalid_request'
  | 'invalid_client'
  | 'invalid_grant'
  | 'invalid_token'
  | 'unauthorized_client'
  | 'unsupported_grant_type'
  | 'invalid_scope'
  | 'invalid_target'
  | 'unsupported_token_type'
  /** RFC 9449 §7.1: a DPoP proof that is missing, malformed or does not check. */
  | 'invalid_dpop_proof'
  /** RFC 9449 §8, §9: the DPoP proof must carry a (current) server nonce, given in DPoP-Nonce. */
  | 'use_dpop_nonce'
  | 'access_denied'
  | 'not_found'
  | 'server_error'
  | 'temporarily_unavailable';

export class OAuthError extends Error {
  constructor(
    readonly code: OAuthErrorCode,
    readonly description: string,
    readonly status: number,
    /** RFC 6749 §5.2: answer 401 with WWW-Authenticate when the client used HTTP Basic. */
    readonly wwwAuthenticate?: string,
    /** Seconds, sent as Retry-After (429, 503). */
    readonly retryAfter?: number,
    /** More response headers (RFC 9449's DPoP-Nonce); gRPC sends them as trailers, lower case. */
    readonly headers?: Record<string, string>,
  ) {
    super(`${code}: ${description}`);
    this.name = 'OAuthError';
  }

  toJSON(): { error: string; error_description: string } {
    return { error: this.code, error_description: this.description };
  }
}

/** Longest piece of a client's input an error message repeats: enough to recognise it, too short to bloat an answer. */
const ECHO_LIMIT = 64;

/** A client's input as an error message quotes it: cut to ECHO_LIMIT characters. */
export function echo(input: string): string {
  return input.length <= ECHO_LIMIT ? input : `${input.slice(0, ECHO_LIMIT)}…`;
}

export const invalidRequest = (description: string) => new OAuthError('invalid_request', description, 400);
export const invalidScope = (description: string) => new OAuthError('invalid_scope', description, 400);
export const invalidTarget = (description: string) => new OAuthError('invalid_target', description, 400);
export const unsupportedGrantType = (description: string) => new OAuthError('unsupported_grant_type', description, 400);
export const notFound = (description: string) => new OAuthError('not_found', description, 404);
/** One answer for every client authentication failure, so ids cannot be enumerated. */
export const invalidClient = (usedBasic: boolean) =>
  new OAuthError(
    'invalid_client',
    'client authentication failed',
    401,
    usedBasic ? 'Basic realm="token-authority", charset="UTF-8"' : undefined,
  );

/** Too many failed client authentications from this id and address, or from this address. */
export const tooManyFailures = (retryAfter: number) =>
  new OAuthError('temporarily_unavailable', 'too many failed client authentications; retry later', 429, undefined, retryAfter);
/** The admin API without the admin bearer token. */
export const adminTokenRequired = () =>
  new OAuthError('invalid_token', 'a valid admin bearer token is required', 401, 'Bearer realm="admin"');
/** Too many wrong admin tokens from this address (or, past the admin budget, from addresses never seen with the right one). */
export const tooManyAdminFailures = (retryAfter: number) =>
  new OAuthError('temporarily_unavailable', 'too many wrong admin tokens; retry later', 429, undefined, retryAfter);
/** Too many wrong bearer tokens on AuthorityWatch (the data plane or admin token) from this address. */
export const tooManyWrongTokens = (retryAfter: number) =>
  new OAuthError('temporarily_unavailable', 'too many wrong bearer tokens; retry later', 429, undefined, retryAfter);
/** The bounded secret verification queue is full (see secret-hash.ts). */
export const busy = () => new OAuthError('temporarily_unavailable', 'the server is busy; retry later', 503, undefined, 1);

/** Errors of the admin API: validation, missing entity, conflict, failed If-Match. */
export class AdminError extends Error {
  constructor(
    readonly status: 400 | 404 | 409 | 412,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'AdminError';
  }
}

/**
 * The store cannot be reached (a shared database down or cut off). Requests that need it are
 * answered 503 `temporarily_unavailable` (gRPC UNAVAILABLE) and may be retried; the store
 * reconnects by itself.
 */
export class StoreUnavailableError extends OAuthError {
  constructor(readonly reason: string) {
    super('temporarily_unavailable', 'the store is unreachable; retry shortly', 503, undefined, 1);
    this.name = 'StoreUnavailableError';
  }
}
