import { randomUUID } from 'node:crypto';
import { DPOP_ALGORITHMS, DpopVerifier } from './dpop';
import type { DpopNonces } from './dpop-nonce';
import { LRUCache } from 'lru-cache';
import type { AuthorityConfig, SigningAlgorithm } from './config';
import { AuthFailureLimiter, DEFAULT_AUTH_FAILURE_SETTINGS } from './auth-failure-limiter';
import { ASSERTION_ALGORITHMS, type AssertionContext } from './client-assertion';
import { authenticateClient, ClientAuthError, extractClientCredentials } from './client-auth';
import { RemoteJwks } from './remote-jwks';
import { type ClientCertificate, parseClientCertificate } from './mtls';
import { signJwt, verifyJws, type JwsFailure } from './crypto/jws';
import { echo, invalidRequest, invalidScope, invalidTarget, OAuthError, tooManyFailures, unsupportedGrantType } from './errors';
import type { KeyRing } from './key-ring';
import { NO_OBSERVER, type AuthorityObserver, type OAuthEndpoint } from './observer';
import { grantableScopes, isApiKeyUsable, SIGN_KEYPAIR_METADATA, type ApiKeyRecord } from './model';
import { requireParam, type OAuthParams } from './params';
import type { AuthorityStore } from './store/repositories';

/** What a transport hands the core: decoded parameters and the Authorization header, if any. */
export interface OAuthRequest {
  params: OAuthParams;
  authorization?: string;
  /** The client's address (REST: the peer, or the address the trusted proxy saw per trustProxy; gRPC: the peer), for the failure limits. */
  clientAddress?: string;
  /**
   * RFC 9449: the request's `DPoP` header(s) (gRPC: `dpop` metadata), when it has any, the URL
   * it was sent to, and whom to give a fresh nonce for the answer's DPoP-Nonce header.
   */
  dpop?: { proofs: string | string[]; requestUrl?: string; onNonce?: (nonce: string) => void };
  /**
   * RFC 8705: the client certificate of the TLS connection, as the trusted proxy in front forwarded
   * it (PEM or URL-encoded PEM: Envoy's x-forwarded-client-cert `Cert`). The transport passes it
   * only from a trusted peer.
   */
  clientCertificate?: string;
  /** RFC 8705: the proxy took that certificate without verifying its chain (CERTIFICATE_UNVERIFIED_HEADER): no tls_client_auth with it. */
  clientCertificateUnverified?: boolean;
}

export interface TokenResponse {
  access_token: string;
  token_type: 'Bearer' | 'DPoP';
  expires_in: number;
  scope?: string;
}

export interface AccessTokenClaims {
  iss: string;
  sub: string;
  client_id: string;
  cid: string;
  aud: string;
  iat: number;
  nbf: number;
  exp: number;
  jti: string;
  scope?: string;
  /** RFC 9449 §6.1: the token is bound to the key with this RFC 7638 thumbprint (DPoP). */
  cnf?: { jkt?: string; 'x5t#S256'?: string };
}

export type IntrospectionResponse =
  | { active: false }
  | (AccessTokenClaims & {
      active: true;
      token_type: 'Bearer' | 'DPoP';
      clientName: string;
      metadata: Record<string, string>;
      tags: string[];
      access_type: 'apikey';
    });

/** Why a token is not valid: doubles as a log and metric label. */
export type TokenRejection = JwsFailure | 'not_access_token' | 'wrong_issuer' | 'expired' | 'not_yet_valid' | 'revoked' | 'client_unusable';

export type TokenValidation = { valid: true; claims: AccessTokenClaims; apiKey: ApiKeyRecord } | { valid: false; reason: TokenRejection };

const GRANT_TYPE = 'client_credentials';
/** RFC 6749 §3.3 scope-token characters. */
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]+$/;

export interface Clock {
  now(): number;
}

export class TokenService {
  /** Successful signature checks, by token; never past the token's `exp`. */
  private readonly verified = new LRUCache<string, { claims: AccessTokenClaims; kid: string }>({ max: 50_000 });
  /** DPoP proofs: their jtis recorded in the store (once across replicas), nonces when required. */
  private readonly proofs: DpopVerifier;
  /** What private_key_jwt assertions are checked against: aud, the keys behind jwks_uri, the used jtis. */
  private readonly assertions: AssertionContext;

  constructor(
    private readonly config: AuthorityConfig,
    private readonly store: AuthorityStore,
    private readonly keyRing: KeyRing,
    private readonly clock: Clock = { now: () => Date.now() },
    private readonly observer: AuthorityObserver = NO_OBSERVER,
    private readonly failures = new AuthFailureLimiter(DEFAULT_AUTH_FAILURE_SETTINGS),
    remoteJwks = new RemoteJwks(),
    dpopNonces?: DpopNonces,
  ) {
    this.proofs = new DpopVerifier({
      replays: { useOnce: (id, ttlMs) => this.store.assertionReplays.useOnce(`dpop:${id}`, this.clock.now() + ttlMs, this.clock.now()) },
      nonces: dpopNonces,
    });
    // RFC 7523 §3 item 3: the token endpoint's URL (OpenID Connect Core §9) or the issuer (RFC 7523's
    // "identifies the authorization server"), for all three endpoints.
    this.assertions = {
      audiences: [this.endpoint('token'), this.config.issuer],
      remoteJwks: (uri, refresh) => remoteJwks.get(uri, refresh),
      replays: this.store.assertionReplays,
    };
  }

  private endpoint(name: 'token' | 'introspect' | 'revoke' | 'jwks'): string {
    const base = `${this.config.issuer.replace(/\/$/, '')}/.well-known/otoroshi/oauth`;
    return { token: `${base}/token`, introspect: `${base}/token/introspect`, revoke: `${base}/token/revoke`, jwks: `${base}/jwks.json` }[
      name
    ];
  }

  /**
   * Client authentication behind the failure limits: an id and address (or an address) that failed
   * too often, or an id past its budget from an address it never authenticated from (beyond the
   * shared slow slot), is refused with 429 before any secret is checked; every invalid_client counts.
   */
  private async authenticate(request: OAuthRequest, now: number, certificate = this.certificateOf(request)): Promise<ApiKeyRecord> {
    const credentials = extractClientCredentials(request.authorization, request.params, certificate);
    const clientId = credentials?.clientId ?? '';
    const wait = await this.failures.admit(clientId, request.clientAddress);
    if (wait !== undefined) throw tooManyFailures(wait);
    try {
      const apiKey = await authenticateClient(this.store.apiKeys, credentials, now, this.assertions);
      // This address is known for this client: exempt from the per-client budget (issue 22).
      await this.failures.succeeded(clientId, request.clientAddress);
      return apiKey;
    } catch (error) {
      if (error instanceof OAuthError && error.code === 'invalid_client') await this.failures.failed(clientId, request.clientAddress);
      throw error;
    }
  }

  /** The request's client certificate, parsed; a forwarded one that is no certificate is invalid_request. */
  private certificateOf(request: OAuthRequest): ClientCertificate | undefined {
    if (request.clientCertificate === undefined) return undefined;
    const certificate = parseClientCertificate(request.clientCertificate, request.clientCertificateUnverified);
    if (!certificate) throw invalidRequest('the forwarded client certificate is not an X.509 certificate');
    return certificate;
  }

  /** RFC 6749 §4.4: the client credentials grant. */
  async issueToken(request: OAuthRequest): Promise<TokenResponse> {
    const signed: { algorithm?: SigningAlgorithm } = {};
    try {
      const response = await this.grant(request, signed);
      this.observer.tokenRequest('issued', signed.algorithm);
      return response;
    } catch (error) {
      this.observer.tokenRequest(this.failed('token', error), signed.algorithm);
      throw error;
    }
  }

  /**
   * Reports a client authentication failure with its reason; the OAuth2 code the caller gets
   * (a non-OAuth error is a `server_error` to the caller: the transport answers 500/INTERNAL).
   */
  private failed(endpoint: OAuthEndpoint, error: unknown) {
    if (error instanceof ClientAuthError) this.observer.clientAuthFailed(endpoint, error.reason);
    return error instanceof OAuthError ? error.code : 'server_error';
  }

  private async grant(request: OAuthRequest, signed: { algorithm?: SigningAlgorithm }): Promise<TokenResponse> {
    const { params } = request;
    const grantType = requireParam(params, 'grant_type');
    if (grantType !== GRANT_TYPE) throw unsupportedGrantType(`grant_type '${echo(grantType)}' is not supported; use client_credentials`);
    const now = this.clock.now();
    const certificate = this.certificateOf(request);
    const apiKey = await this.authenticate(request, now, certificate);
    if (apiKey.tokenBinding === 'mtls' && !certificate)
      throw invalidRequest("this client's tokens are certificate-bound (RFC 8705): connect with its client certificate");
    const scopes = this.grantedScopes(apiKey, params.scope);
    const audience = this.requestedAudience(params);
    // RFC 9449 §5.2 (dpop_bound_access_tokens): a key whose tokens must be DPoP-bound gets none without a proof.
    if (apiKey.tokenBinding === 'dpop' && !request.dpop)
      throw new OAuthError('invalid_dpop_proof', "this client's tokens must be DPoP-bound (tokenBinding dpop): send a DPoP proof", 400);
    const proof = request.dpop
      ? await this.proofs.verify(request.dpop.proofs, {
          method: 'POST',
          urls: [this.tokenEndpoint(), ...(request.dpop.requestUrl ? [request.dpop.requestUrl] : [])],
          now,
        })
      : undefined;
    const jkt = proof?.jkt;
    if (proof?.nonce) request.dpop?.onNonce?.(proof.nonce);

    const keyPairId = apiKey.metadata[SIGN_KEYPAIR_METADATA] || this.config.defaultKeyPair;
    const signingKey = this.keyRing.signingKey(keyPairId);
    if (!signingKey) {
      throw new OAuthError('unauthorized_client', `key pair '${keyPairId}' selected for this client does not exist or is retired`, 400);
    }
    signed.algorithm = signingKey.algorithm;
    const issuedAt = Math.floor(now / 1000);
    const expiresIn = Math.floor(this.config.expiration / 1000);
    const claims: AccessTokenClaims = {
      iss: this.config.issuer,
      sub: apiKey.clientId,
      client_id: apiKey.clientId,
      cid: apiKey.clientId,
      aud: audience,
      iat: issuedAt,
      nbf: issuedAt,
      exp: issuedAt + expiresIn,
      jti: randomUUID(),
    };
    if (scopes.length) claims.scope = scopes.join(' ');
    // RFC 9449 §6.1 and RFC 8705 §3.1: bound to the DPoP key and/or the TLS client certificate.
    if (jkt || certificate) claims.cnf = { ...(jkt && { jkt }), ...(certificate && { 'x5t#S256': certificate.thumbprint }) };
    // RFC 9068 §2.1: typ at+jwt.
    const accessToken = await signJwt(signingKey, { typ: 'at+jwt' }, claims as unknown as Record<string, unknown>);
    const response: TokenResponse = { access_token: accessToken, token_type: jkt ? 'DPoP' : 'Bearer', expires_in: expiresIn };
    if (claims.scope) response.scope = claims.scope;
    return response;
  }

  /** RFC 6749 §3.3: asked scopes must all be granted to the key; none asked means all of them. */
  private grantedScopes(apiKey: ApiKeyRecord, requested: string | undefined): string[] {
    const grantable = grantableScopes(apiKey);
    if (requested === undefined) return [...grantable];
    const asked = requested.split(' ').filter(Boolean);
    if (requested.trim() === '' || asked.some((scope) => !SCOPE_TOKEN.test(scope))) throw invalidScope('scope is malformed');
    const refused = asked.filter((scope) => !grantable.has(scope));
    if (refused.length) throw invalidScope(`scope not granted to this client: ${echo(refused.join(' '))}`);
    return [...new Set(asked)];
  }

  /** `audience` (Auth0 style) or `resource` (RFC 8707); either must be an allowed audience. */
  private requestedAudience(params: OAuthParams): string {
    const { audience, resource } = params;
    if (audience !== undefined && resource !== undefined && audience !== resource) {
      throw invalidRequest('audience and resource name different targets');
    }
    const asked = audience ?? resource;
    if (asked === undefined) return this.config.audience;
    if (asked !== this.config.audience && !this.config.allowedAudiences.includes(asked)) {
      throw invalidTarget(`audience '${echo(asked)}' is not allowed`);
    }
    return asked;
  }

  /** Checks a token as a resource server would: signature, type, issuer, time, revocation, key state. */
  async validateAccessToken(token: string): Promise<TokenValidation> {
    const now = this.clock.now();
    const signed = this.verifySignature(token, now);
    if ('reason' in signed) return { valid: false, reason: signed.reason };
    const { claims } = signed;
    if (claims.nbf > Math.floor(now / 1000)) return { valid: false, reason: 'not_yet_valid' };
    if (await this.store.revocations.isRevoked(claims.jti)) return { valid: false, reason: 'revoked' };
    const apiKey = await this.store.apiKeys.get(claims.client_id);
    if (!apiKey || !isApiKeyUsable(apiKey, now)) return { valid: false, reason: 'client_unusable' };
    return { valid: true, claims, apiKey };
  }

  private verifySignature(token: string, now: number): { claims: AccessTokenClaims } | { reason: TokenRejection } {
    const nowSeconds = Math.floor(now / 1000);
    const cached = this.verified.get(token);
    if (cached) {
      // The key may have been deleted or its verification window closed since.
      if (!this.keyRing.verificationKey(cached.kid)) return { reason: 'unknown_key' };
      return cached.claims.exp > nowSeconds ? { claims: cached.claims } : { reason: 'expired' };
    }
    const result = verifyJws(token, this.keyRing.verificationKey);
    if (!result.ok) return { reason: result.reason };
    if (result.header.typ !== 'at+jwt') return { reason: 'not_access_token' };
    const claims = result.claims;
    if (
      typeof claims.exp !== 'number' ||
      typeof claims.nbf !== 'number' ||
      typeof claims.iat !== 'number' ||
      typeof claims.jti !== 'string' ||
      typeof claims.client_id !== 'string' ||
      typeof claims.sub !== 'string'
    ) {
      return { reason: 'not_access_token' };
    }
    if (claims.iss !== this.config.issuer) return { reason: 'wrong_issuer' };
    if (claims.exp <= nowSeconds) return { reason: 'expired' };
    const typed = claims as unknown as AccessTokenClaims;
    this.verified.set(token, { claims: typed, kid: result.header.kid as string }, { ttl: (typed.exp - nowSeconds) * 1000 });
    return { claims: typed };
  }

  /** RFC 7662. Starts from `active: false` and says nothing more for any failed check. */
  async introspect(request: OAuthRequest): Promise<IntrospectionResponse> {
    try {
      const response = await this.introspection(request);
      this.observer.introspection(response.active ? 'active' : 'inactive');
      return response;
    } catch (error) {
      this.observer.introspection(this.failed('introspect', error));
      throw error;
    }
  }

  private async introspection(request: OAuthRequest): Promise<IntrospectionResponse> {
    if (this.config.introspection.requireClientAuth) {
      await this.authenticate(request, this.clock.now());
    }
    const token = requireParam(request.params, 'token');
    const validation = await this.validateAccessToken(token);
    if (!validation.valid) return { active: false };
    const { claims, apiKey } = validation;
    return {
      active: true,
      token_type: claims.cnf?.jkt ? 'DPoP' : 'Bearer',
      ...claims,
      clientName: apiKey.clientName,
      metadata: apiKey.metadata,
      tags: apiKey.tags,
      access_type: 'apikey',
    };
  }

  /**
   * RFC 7009. The client authenticates and may revoke only its own tokens; a token that is
   * not ours or no longer valid is answered with success (§2.2), as there is nothing to do.
   */
  async revoke(request: OAuthRequest): Promise<void> {
    try {
      this.observer.revocation(await this.revocation(request));
    } catch (error) {
      this.observer.revocation(this.failed('revoke', error));
      throw error;
    }
  }

  private async revocation(request: OAuthRequest): Promise<'revoked' | 'ignored'> {
    const now = this.clock.now();
    const client = await this.authenticate(request, now);
    const token = requireParam(request.params, 'token');
    const signed = this.verifySignature(token, now);
    if ('reason' in signed) return 'ignored';
    if (signed.claims.client_id !== client.clientId) throw invalidRequest('the token was not issued to this client');
    await this.store.revocations.revoke(signed.claims.jti, signed.claims.exp * 1000);
    return 'revoked';
  }

  /** The token endpoint's URL as the metadata publishes it (what a DPoP proof's htu names). */
  private tokenEndpoint(): string {
    return `${this.config.issuer.replace(/\/$/, '')}/.well-known/otoroshi/oauth/token`;
  }

  /** RFC 8414 authorization server metadata. */
  metadata(): Record<string, unknown> {
    const authMethods = ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth'];
    const signingAlgorithms = [...ASSERTION_ALGORITHMS];
    return {
      issuer: this.config.issuer,
      token_endpoint: this.endpoint('token'),
      jwks_uri: this.endpoint('jwks'),
      introspection_endpoint: this.endpoint('introspect'),
      revocation_endpoint: this.endpoint('revoke'),
      grant_types_supported: [GRANT_TYPE],
      response_types_supported: [],
      token_endpoint_auth_methods_supported: authMethods,
      token_endpoint_auth_signing_alg_values_supported: signingAlgorithms,
      introspection_endpoint_auth_methods_supported: this.config.introspection.requireClientAuth ? authMethods : ['none', ...authMethods],
      introspection_endpoint_auth_signing_alg_values_supported: signingAlgorithms,
      revocation_endpoint_auth_methods_supported: authMethods,
      // RFC 9449 §5.1: the token endpoint takes DPoP proofs signed with these.
      dpop_signing_alg_values_supported: [...DPOP_ALGORITHMS],
      // RFC 8705 §3.3: a token issued over a connection with a client certificate is bound to it.
      tls_client_certificate_bound_access_tokens: true,
      revocation_endpoint_auth_signing_alg_values_supported: signingAlgorithms,
    };
  }
}
