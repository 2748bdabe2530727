import type { SigningAlgorithm } from './config';
import type { OAuthErrorCode } from './errors';

/** Why a client failed to authenticate. The client always gets the same `invalid_client` (or `invalid_request` for a malformed request); operators see which. */
export type ClientAuthFailure =
  | 'no_credentials'
  | 'malformed'
  | 'multiple_methods'
  | 'unknown_client'
  | 'invalid_secret'
  | 'disabled'
  | 'expired'
  /** private_key_jwt: the key holds no jwks and no jwks_uri. */
  | 'no_jwks'
  /** private_key_jwt: its jwks_uri could not be fetched (or answered no usable JWKS). */
  | 'jwks_unavailable'
  /** private_key_jwt: bad signature, unknown kid, refused alg, wrong iss/sub/aud, expired, too long-lived, no jti. */
  | 'invalid_assertion'
  /** private_key_jwt: the assertion's jti was used before. */
  | 'replayed_assertion'
  /** tls_client_auth: the certificate lacks the key's registered subject DN or SAN; self_signed: its public key is not in the key's JWKS. */
  | 'certificate_mismatch'
  /** tls_client_auth: the proxy took the certificate without verifying its chain (no client CA on its listener). */
  | 'certificate_unverified'
  /** A client id and a certificate, but the key is registered for neither tls_client_auth nor self_signed_tls_client_auth. */
  | 'no_certificate_auth';

export type OAuthEndpoint = 'token' | 'introspect' | 'revoke';

/**
 * What the core reports about each OAuth2 request, whatever transport it came by: the one place
 * outcomes are counted, so REST and gRPC cannot diverge. The service wires it to its metrics and
 * logs; every value is from a small fixed set (never client input), fit for a metric label.
 */
export interface AuthorityObserver {
  /** A token request ended: issued (signed with `algorithm`) or refused with an OAuth2 error code. */
  tokenRequest(outcome: 'issued' | OAuthErrorCode, algorithm: SigningAlgorithm | undefined): void;
  clientAuthFailed(endpoint: OAuthEndpoint, reason: ClientAuthFailure): void;
  /** `active`, `inactive`, or the OAuth2 error code the caller got. */
  introspection(outcome: 'active' | 'inactive' | OAuthErrorCode): void;
  /** `revoked`; `ignored` (not a valid token of ours: RFC 7009 answers success, nothing to do); or the error code. */
  revocation(outcome: 'revoked' | 'ignored' | OAuthErrorCode): void;
}

export const NO_OBSERVER: AuthorityObserver = {
  tokenRequest() {},
  clientAuthFailed() {},
  introspection() {},
  revocation() {},
};

/** Several observers told the same outcomes, in order (metrics, then logs). */
export function observers(...list: AuthorityObserver[]): AuthorityObserver {
  return {
    tokenRequest(outcome, algorithm) {
      for (const observer of list) observer.tokenRequest(outcome, algorithm);
    },
    clientAuthFailed(endpoint, reason) {
      for (const observer of list) observer.clientAuthFailed(endpoint, reason);
    },
    introspection(outcome) {
      for (const observer of list) observer.introspection(outcome);
    },
    revocation(outcome) {
      for (const observer of list) observer.revocation(outcome);
    },
  };
}
