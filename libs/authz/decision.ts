import { legalHeaderValue } from '../http/header-value';

/**
 * What ext-authz answers, independent of transport: Envoy gRPC, Envoy/nginx HTTP. Deny reasons
 * double as metric labels; the table below is the one place their status and message are set.
 */
export type DenyReason =
  | 'not_ready'
  | 'unknown_policy'
  | 'no_credential'
  | 'malformed_credential'
  | 'bad_signature'
  | 'unknown_key'
  | 'not_access_token'
  | 'wrong_issuer'
  | 'wrong_audience'
  | 'sender_constrained'
  | 'invalid_dpop_proof'
  | 'use_dpop_nonce'
  | 'not_dpop_bound'
  | 'dpop_required'
  | 'wrong_certificate'
  | 'mtls_required'
  | 'expired'
  | 'not_yet_valid'
  | 'revoked'
  | 'unknown_api_key'
  | 'disabled_api_key'
  | 'expired_api_key'
  | 'bad_secret'
  | 'not_authorized'
  | 'missing_scope'
  | 'quota_exceeded'
  | 'quota_unavailable'
  | 'too_many_failures'
  | 'busy';

/** Otoroshi's error messages where it has one, a more precise one where that helps the caller. */
export type DenyStatus = 401 | 403 | 429 | 503;

export const DENIALS: Record<DenyReason, { status: DenyStatus; message: string }> = {
  not_ready: { status: 503, message: 'Authorization service is starting' },
  unknown_policy: { status: 403, message: 'No authorization policy for this route' },
  no_credential: { status: 401, message: 'No ApiKey provided' },
  malformed_credential: { status: 401, message: 'Bad ApiKey' },
  bad_signature: { status: 401, message: 'Bad ApiKey' },
  unknown_key: { status: 401, message: 'Bad ApiKey' },
  not_access_token: { status: 401, message: 'Bad ApiKey' },
  wrong_issuer: { status: 401, message: 'Bad ApiKey' },
  wrong_audience: { status: 401, message: 'Bad ApiKey' },
  // A DPoP-bound token (cnf.jkt) is taken only with the DPoP scheme and a proof of its key (RFC 9449 §7).
  sender_constrained: { status: 401, message: 'Token bound to a DPoP key: not accepted here' },
  invalid_dpop_proof: { status: 401, message: 'Invalid DPoP proof' },
  // RFC 9449 §9: the proof must carry the nonce sent in DPoP-Nonce.
  use_dpop_nonce: { status: 401, message: 'DPoP proof needs a nonce: use the one in DPoP-Nonce' },
  not_dpop_bound: { status: 401, message: 'Token not bound to a DPoP key: send it as a Bearer token' },
  // The API key's tokenBinding is dpop: its tokens count only under the DPoP scheme with a proof.
  dpop_required: { status: 401, message: 'ApiKey requires DPoP-bound tokens' },
  // RFC 8705 §3: a certificate-bound token (cnf.x5t#S256) only over a TLS connection with that client certificate.
  wrong_certificate: { status: 401, message: 'Token bound to a client certificate this connection did not present' },
  // The API key's tokenBinding is mtls: its tokens count only certificate-bound.
  mtls_required: { status: 401, message: 'ApiKey requires certificate-bound tokens' },
  expired: { status: 401, message: 'Token expired' },
  not_yet_valid: { status: 401, message: 'Token not yet valid' },
  revoked: { status: 401, message: 'Token revoked' },
  unknown_api_key: { status: 401, message: 'Bad ApiKey' },
  disabled_api_key: { status: 401, message: 'ApiKey disabled' },
  expired_api_key: { status: 401, message: 'ApiKey expired' },
  bad_secret: { status: 401, message: 'Bad ApiKey' },
  not_authorized: { status: 403, message: 'ApiKey not authorized on this route' },
  missing_scope: { status: 403, message: 'ApiKey lacks a required scope' },
  quota_exceeded: { status: 429, message: 'You performed too much requests' },
  quota_unavailable: { status: 503, message: 'Quota service unavailable' },
  too_many_failures: { status: 429, message: 'Too many failed authentications' },
  busy: { status: 503, message: 'Authorization service is busy' },
};

export interface Allow {
  allowed: true;
  clientId: string;
  /** Headers for the upstream; each overwrites a header of that name the client sent. */
  headersToSet: Record<string, string>;
  /** Headers to remove before the upstream (spoofed identity headers, a stripped credential). */
  headersToRemove: string[];
  /** Headers for the client's response (Otoroshi's remaining-calls headers). */
  responseHeaders: Record<string, string>;
}

export interface Deny {
  allowed: false;
  reason: DenyReason;
  status: DenyStatus;
  /** Seconds, on 429 and 503: the client's Retry-After. */
  retryAfter?: number;
  /** Otoroshi's body: {"Otoroshi-Error": message}. */
  message: string;
  /** RFC 6750 / RFC 7617 challenge, on 401 and on insufficient scope. */
  wwwAuthenticate?: string;
  /** RFC 9449 §9, with use_dpop_nonce: the nonce the client's next proof must carry (DPoP-Nonce). */
  dpopNonce?: string;
}

export type Decision = Allow | Deny;

export function deny(reason: DenyReason, challenge?: string, retryAfter?: number): Deny {
  const { status, message } = DENIALS[reason];
  // The challenge names the route's policy: made a legal header value here, for both transports.
  const decision: Deny = {
    allowed: false,
    reason,
    status,
    message,
    wwwAuthenticate: challenge === undefined ? undefined : legalHeaderValue(challenge),
  };
  if (retryAfter !== undefined) decision.retryAfter = retryAfter;
  return decision;
}

/** Otoroshi's headers on a call within quota. */
export const DAILY_REMAINING_HEADER = 'Otoroshi-Daily-Calls-Remaining';
export const MONTHLY_REMAINING_HEADER = 'Otoroshi-Monthly-Calls-Remaining';

/** The JSON body of a denial, as Otoroshi writes it. */
export function denialBody(decision: Deny): string {
  return JSON.stringify({ 'Otoroshi-Error': decision.message });
}
