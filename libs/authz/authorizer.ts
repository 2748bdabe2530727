import { hash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { AuthFailureLimiter } from '../core/auth-failure-limiter';
import { SecretHashBusy, verifySecret } from '../core/crypto/secret-hash';
import { verifyJws } from '../core/crypto/jws';
import type { DataPlaneApiKey } from '../core/data-plane';
import { DPOP_ALGORITHMS, DPOP_NONCE_HEADER, DpopVerifier, type DpopProof } from '../core/dpop';
import { OAuthError } from '../core/errors';
import { forwardedThumbprint } from '../core/mtls';
import type { ExtAuthzConfig, ExtractorName, RoutePolicy } from './config';
import { legalHeaderValue } from '../http/header-value';
import { type Allow, DAILY_REMAINING_HEADER, deny, MONTHLY_REMAINING_HEADER, type Decision, type DenyReason } from './decision';
import type { QuotaDecision, QuotaEnforcer } from '../quotas/quotas';
import type { AuthorityReplica } from './replica';
import { InlinePolicies } from './route-policy';

/** A request to authorize, as every transport can describe it. Header names are lower case. */
export interface AuthzRequest {
  /** The policy's name: a policy of the config, or the route's id when `inlinePolicy` is set. */
  policy: string | undefined;
  /** The route's policy as JSON, carried by Envoy in context_extensions (libs/authz/route-policy.ts): it wins over `policy`. */
  inlinePolicy?: string;
  headers: Readonly<Record<string, string | undefined>>;
  /** The client's address, for the failure limits of secret credentials. */
  sourceAddress?: string;
  /** The request's method and URL (scheme://host/path, query ignored), what a DPoP proof's htm and htu must name. */
  method?: string;
  url?: string;
  /**
   * RFC 8705: the client certificate of the downstream TLS connection, URL-encoded PEM as Envoy
   * gives it (CheckRequest attributes.source.certificate with include_peer_certificate, or the
   * x-forwarded-client-cert `Cert` from a trusted proxy in HTTP mode).
   */
  clientCertificate?: string;
}

/** Optional stages of the pipeline: quotas, failure limits, and whom to tell when Redis is away. */
export interface AuthorizerGuards {
  quotas?: QuotaEnforcer;
  failures?: AuthFailureLimiter;
  /** A call let through (fail open) or refused (fail closed) because the quota store did not answer. */
  onQuotaStoreFailure?: (error: Error, policy: string, failOpen: boolean) => void;
  /** DPoP proofs: where their jtis are remembered (Redis for several replicas) and whether nonces are required. */
  dpop?: DpopVerifier;
}

type Credential =
  | { kind: 'bearer'; token: string; header: 'authorization' }
  | { kind: 'dpop'; token: string; header: 'authorization' }
  | { kind: 'secret'; clientId: string; clientSecret: string; headers: string[]; scheme?: 'Basic' }
  | { kind: 'clientId'; clientId: string; headers: string[] };

type Identity =
  | { apiKey: DataPlaneApiKey; scopes: readonly string[]; dpopNonce?: string }
  | { reason: DenyReason; retryAfter?: number; dpopNonce?: string };

/** An allow made once for a key, a policy, a set of scopes and a scheme (Authorizer.conclude). */
interface SharedAllow {
  policy: RoutePolicy;
  scopes: readonly string[];
  kind: 'bearer' | 'dpop';
  decision: Allow;
}
/** Policies x scope sets x schemes one key is seen with, at most; past it its allows are made again. */
const ALLOWS_PER_KEY = 32;

function deepFreeze(allow: Allow): Allow {
  Object.freeze(allow.headersToSet);
  Object.freeze(allow.headersToRemove);
  Object.freeze(allow.responseHeaders);
  return Object.freeze(allow);
}

interface VerifiedToken {
  kid: string;
  clientId: string;
  jti: string;
  exp: number;
  nbf: number;
  aud: readonly string[];
  scopes: readonly string[];
  /** cnf.jkt of a DPoP-bound token. */
  jkt?: string;
  /** cnf.x5t#S256 of a certificate-bound token (RFC 8705 §3.1). */
  x5t?: string;
}

/**
 * What one cached token costs the heap besides its jti, in bytes (measured with
 * bench/ext-authz-memory.ts: about 250 with a UUID jti): the key (a 32-character digest), the
 * entry object, lru-cache's bookkeeping (map entry, list slots, TTL slots). Its kid, client id,
 * audiences and scopes are shared with every other token of the same key (interned).
 */
const CACHED_TOKEN_BYTES = 200;
/** Interned strings and arrays: a handful per API key; cleared whole past this (only verified tokens add to it). */
const INTERNED_MAX = 10_000;

/** The request headers a policy reads (lower case). */
export function policyHeaderNames(policy: RoutePolicy): string[] {
  return ['authorization', 'dpop', policy.clientIdHeader, policy.clientSecretHeader];
}

/** Route ids of inline policies given their own metric label, beyond the config's policies. */
const MAX_ROUTE_LABELS = 10_000;

const BEARER = /^Bearer[ ]+([^ ]*)\s*$/i;
const DPOP = /^DPoP[ ]+([^ ]*)\s*$/i;
const BASIC = /^Basic[ ]+([^ ]*)\s*$/i;
const JWT_CHARACTERS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/**
 * The decision pipeline: find the policy, extract a credential, verify it against the replica,
 * check the key's state, the route and the scopes, then say what the upstream gets. It reads
 * memory only (a short secret's scrypt is the one asynchronous step, cached after success).
 */
export class Authorizer {
  /**
   * Successful signature checks, by the token's SHA-256 (32 bytes as a latin1 ('binary') string: a token is
   * 700 characters and more with RS256); entries never outlive the token's `exp`. Bounded by
   * count (cacheSize) and by heap bytes (cacheMaxBytes).
   */
  private readonly verified: LRUCache<string, VerifiedToken> | undefined;
  /** The strings and arrays that the cached tokens of one API key have in common, one copy each. */
  private readonly interned = new Map<string, string | readonly string[]>();
  /** The allows made for each key (by policy, scopes and scheme): a key object is replaced, never changed, when its key changes. */
  private readonly allows = new WeakMap<DataPlaneApiKey, SharedAllow[]>();
  private readonly inline = new InlinePolicies();
  /**
   * DPoP proofs at this resource (RFC 9449 §7), the token endpoint's checks plus ath and the
   * token's key. Their jtis are remembered in guards.dpop's memory: this process's (an LRU of
   * at most 100,000 for 65 s) unless it is given a shared one (Redis).
   */
  private readonly dpop: DpopVerifier;
  /**
   * Policy names worth a metric label: the config's, then route ids of inline policies as they
   * are first seen (up to MAX_ROUTE_LABELS more), so a label set stays bounded.
   */
  readonly policyNames: Set<string>;
  private readonly configPolicyCount: number;

  constructor(
    private readonly config: ExtAuthzConfig,
    private readonly replica: AuthorityReplica,
    private readonly now: () => number = Date.now,
    private readonly guards: AuthorizerGuards = {},
  ) {
    this.dpop = guards.dpop ?? new DpopVerifier();
    this.verified =
      config.cacheSize > 0 && config.cacheMaxBytes > 0
        ? new LRUCache({
            max: config.cacheSize,
            maxSize: config.cacheMaxBytes,
            sizeCalculation: (token) => CACHED_TOKEN_BYTES + token.jti.length,
          })
        : undefined;
    this.policyNames = new Set(Object.keys(config.policies));
    this.configPolicyCount = this.policyNames.size;
  }

  /** How full the verified-token cache is: tokens, and their estimated heap bytes (what cacheMaxBytes bounds). */
  tokenCache(): { tokens: number; bytes: number } {
    return { tokens: this.verified?.size ?? 0, bytes: this.verified?.calculatedSize ?? 0 };
  }

  /** The policy a request is decided by: its inline policy when it has one, else the config's policy of that name. */
  policyOf(request: Pick<AuthzRequest, 'policy' | 'inlinePolicy'>): RoutePolicy | undefined {
    if (request.inlinePolicy !== undefined) {
      const policy = this.inline.resolve(request.inlinePolicy);
      if (
        policy &&
        request.policy !== undefined &&
        this.policyNames.size < this.configPolicyCount + MAX_ROUTE_LABELS &&
        !this.policyNames.has(request.policy)
      )
        this.policyNames.add(request.policy);
      return policy;
    }
    // Own properties only: a policy named "constructor" or "__proto__" is simply unknown.
    return request.policy !== undefined && Object.hasOwn(this.config.policies, request.policy)
      ? this.config.policies[request.policy]
      : undefined;
  }

  /** The request headers the pipeline can read (lower case): what a transport must pass on, at least. */
  headerNames(): string[] {
    const names = new Set(['authorization', 'dpop']);
    for (const policy of Object.values(this.config.policies)) names.add(policy.clientIdHeader).add(policy.clientSecretHeader);
    return [...names];
  }

  /** Runs the pipeline; never throws for any input. */
  check(request: AuthzRequest): Promise<Decision> {
    try {
      const decision = this.decide(request);
      return decision instanceof Promise ? decision : Promise.resolve(decision);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * The pipeline, synchronous where nothing needs waiting for: a bearer token (verified or from
   * the cache), its quotas counted in memory or from a Redis lease in hand, and every denial
   * before the credential is looked at, are decided in the caller's tick. A secret's hash or the
   * failure limits, and a reservation from Redis, make it a promise. Throws only on a bug (check()
   * turns that into a rejected promise).
   */
  decide(request: AuthzRequest): Decision | Promise<Decision> {
    if (!this.replica.ready) return deny('not_ready');
    const policy = this.policyOf(request);
    if (!policy) return deny('unknown_policy');
    // One scheme per route (RFC 7235): Basic for routes that take Basic and no bearer token,
    // Bearer otherwise; RFC 6750 error codes only go with Bearer.
    const scheme = policy.extractors.includes('basic') && !policy.extractors.includes('bearer') ? 'Basic' : 'Bearer';
    const challenge = (error?: string, extra = '') =>
      `${scheme} realm="${request.policy}"${scheme === 'Bearer' && error ? `, error="${error}"${extra}` : ''}`;
    const extracted = extractCredential(policy, request.headers);
    if (extracted === 'malformed') return deny('malformed_credential', challenge('invalid_request'));
    if (!extracted) return deny('no_credential', challenge());
    if (extracted.kind === 'bearer')
      return this.conclude(request, policy, extracted, this.identifyBearer(extracted.token, policy, this.now(), request), challenge);
    if (extracted.kind === 'dpop') {
      // RFC 9449 §7.1: the DPoP scheme's own challenge, with the algorithms a proof may use.
      const dpopChallenge = (error?: string, extra = '') =>
        `DPoP realm="${request.policy}", algs="${DPOP_ALGORITHMS.join(' ')}"${error ? `, error="${error}"${extra}` : ''}`;
      const identity = this.identifyDpop(extracted.token, policy, this.now(), request);
      return identity instanceof Promise
        ? identity.then((known) => this.conclude(request, policy, extracted, known, dpopChallenge))
        : this.conclude(request, policy, extracted, identity, dpopChallenge);
    }
    return this.identifySecret(extracted, request.sourceAddress).then((identity: Identity) =>
      this.conclude(request, policy, extracted, identity, challenge),
    );
  }

  /** From an identity (or why there is none) to the decision: entities, scopes, headers, then quotas. */
  private conclude(
    request: AuthzRequest,
    policy: RoutePolicy,
    extracted: Credential,
    identity: Identity,
    challenge: (error?: string, extra?: string) => string,
  ): Decision | Promise<Decision> {
    if ('reason' in identity) {
      if (identity.retryAfter !== undefined) return deny(identity.reason, undefined, identity.retryAfter);
      if (extracted.kind === 'secret' || extracted.kind === 'clientId') return deny(identity.reason, challenge());
      if (identity.reason === 'dpop_required')
        return deny(
          identity.reason,
          `DPoP realm="${request.policy}", algs="${DPOP_ALGORITHMS.join(' ')}", error="invalid_token", error_description="DPoP-bound token required"`,
        );
      if (identity.reason === 'use_dpop_nonce') {
        const denial = deny(
          identity.reason,
          challenge('use_dpop_nonce', ', error_description="Resource server requires nonce in DPoP proof"'),
        );
        denial.dpopNonce = identity.dpopNonce;
        return denial;
      }
      return deny(identity.reason, challenge(identity.reason === 'invalid_dpop_proof' ? 'invalid_dpop_proof' : 'invalid_token'));
    }
    const { apiKey, scopes, dpopNonce } = identity;
    if (policy.authorizedEntities.length && !apiKey.authorizedEntities.some((entity) => policy.authorizedEntities.includes(entity))) {
      return deny('not_authorized');
    }
    const missing = policy.requiredScopes.filter((scope) => !scopes.includes(scope));
    if (missing.length) return deny('missing_scope', challenge('insufficient_scope', `, scope="${policy.requiredScopes.join(' ')}"`));

    // A bearer token's allow depends on nothing but the key, the policy, the scopes and the scheme:
    // made once and shared (frozen), so a warm Check builds nothing and its bytes can be kept.
    // With quotas only the remaining-calls headers are new on each call.
    const shared = extracted.kind === 'bearer' || extracted.kind === 'dpop';
    let base = shared
      ? this.allows.get(apiKey)?.find((allow) => allow.policy === policy && allow.scopes === scopes && allow.kind === extracted.kind)
          ?.decision
      : undefined;
    if (!base) {
      const names = this.config.identityHeaders;
      const headersToSet: Record<string, string> = {
        [names.clientId]: legalHeaderValue(apiKey.clientId),
        [names.clientName]: legalHeaderValue(apiKey.clientName),
      };
      const headersToRemove: string[] = [];
      if (scopes.length) headersToSet[names.scopes] = legalHeaderValue(scopes.join(' '));
      else headersToRemove.push(names.scopes);
      if (policy.stripCredential)
        headersToRemove.push(
          ...(extracted.kind === 'bearer'
            ? [extracted.header]
            : extracted.kind === 'dpop'
              ? [extracted.header, 'dpop']
              : extracted.headers),
        );
      base = { allowed: true, clientId: apiKey.clientId, headersToSet, headersToRemove, responseHeaders: {} };
      if (shared) {
        base = deepFreeze(base);
        const made = this.allows.get(apiKey);
        const entry = { policy, scopes, kind: extracted.kind as SharedAllow['kind'], decision: base };
        if (!made || made.length >= ALLOWS_PER_KEY) this.allows.set(apiKey, [entry]);
        else made.push(entry);
      }
    }
    // Last, so that only calls that would pass are counted (Otoroshi counts allowed calls). In
    // memory, or from a lease in hand, in this tick; a reservation from the store is awaited.
    const quotas = this.guards.quotas;
    if (quotas && apiKey.quotas && policy.quotas) {
      const allow = base;
      const now = quotas.consumeNow(apiKey.clientId, apiKey.quotas);
      if (now) return this.counted(now, allow, request, policy, dpopNonce);
      return quotas.consume(apiKey.clientId, apiKey.quotas).then((quota) => this.counted(quota, allow, request, policy, dpopNonce));
    }
    // RFC 9449 §9: a proof with the previous nonce passes, and the client gets the current one.
    if (dpopNonce) return { ...base, responseHeaders: { [DPOP_NONCE_HEADER]: dpopNonce } };
    return base;
  }

  /** An allow once its call is counted: the remaining calls for the client, or the quota's refusal. */
  private counted(quota: QuotaDecision, allow: Allow, request: AuthzRequest, policy: RoutePolicy, dpopNonce?: string): Decision {
    if (quota.outcome === 'exceeded') return deny('quota_exceeded', undefined, quota.retryAfterSeconds);
    const responseHeaders: Record<string, string> = dpopNonce ? { [DPOP_NONCE_HEADER]: dpopNonce } : {};
    if (quota.outcome === 'unavailable') {
      const failOpen = policy.quotaFailure === 'open';
      this.guards.onQuotaStoreFailure?.(quota.error, request.policy as string, failOpen);
      if (!failOpen) return deny('quota_unavailable', undefined, 1);
    } else {
      responseHeaders[DAILY_REMAINING_HEADER] = String(quota.dailyRemaining);
      responseHeaders[MONTHLY_REMAINING_HEADER] = String(quota.monthlyRemaining);
    }
    // The shared parts (frozen) with this call's own response headers.
    return {
      allowed: true,
      clientId: allow.clientId,
      headersToSet: allow.headersToSet,
      headersToRemove: allow.headersToRemove,
      responseHeaders,
    };
  }

  /**
   * Who a bearer token names (memory only: the verification cache, the replica), or why it names
   * nobody usable. A bearer token must not be bound to a DPoP key (a copied DPoP-bound token is
   * refused); a certificate-bound one must come with its certificate.
   */
  private identifyBearer(token: string, policy: RoutePolicy, now: number, request: AuthzRequest): Identity {
    const verified = this.verifyToken(token, now);
    if ('reason' in verified) return verified;
    const unbound = certificateRefusal(verified, request);
    if (unbound) return unbound;
    if (verified.jkt !== undefined) return { reason: 'sender_constrained' };
    const identity = this.identifyVerified(verified, policy, now);
    // A key whose tokens must be DPoP-bound (tokenBinding dpop, or one this ext-authz does not know): no bearer token of it counts.
    if (!('reason' in identity) && identity.apiKey.tokenBinding !== undefined && identity.apiKey.tokenBinding !== 'mtls')
      return { reason: 'dpop_required' };
    return identity;
  }

  /** The DPoP scheme: the token must be bound, with a proof of its key for this request (asynchronous with a shared jti memory). */
  private identifyDpop(token: string, policy: RoutePolicy, now: number, request: AuthzRequest): Identity | Promise<Identity> {
    const dpop = request;
    const verified = this.verifyToken(token, now);
    if ('reason' in verified) return verified;
    const unbound = certificateRefusal(verified, request);
    if (unbound) return unbound;
    if (verified.jkt === undefined) return { reason: 'not_dpop_bound' };
    if (dpop.method === undefined || dpop.url === undefined) return { reason: 'invalid_dpop_proof' };
    let proof: DpopProof | Promise<DpopProof>;
    try {
      proof = this.dpop.verify(dpop.headers.dpop, { method: dpop.method, urls: [dpop.url], now, accessToken: token, jkt: verified.jkt });
    } catch (error) {
      return proofRefused(error);
    }
    const identified = (checked: DpopProof): Identity => {
      const identity = this.identifyVerified(verified, policy, now);
      if (checked.nonce && !('reason' in identity)) identity.dpopNonce = checked.nonce;
      return identity;
    };
    return proof instanceof Promise ? proof.then(identified, proofRefused) : identified(proof);
  }

  /** The token's key, audience and revocation, once its signature (and any proof) checked. */
  private identifyVerified(verified: VerifiedToken, policy: RoutePolicy, now: number): Identity {
    if (this.replica.isRevoked(verified.jti)) return { reason: 'revoked' };
    const audiences = policy.audiences.length ? policy.audiences : [this.replica.audience];
    if (!verified.aud.some((audience) => audiences.includes(audience))) return { reason: 'wrong_audience' };
    const apiKey = this.replica.apiKey(verified.clientId);
    const state = apiKeyState(apiKey, now);
    if (state) return state;
    // tokenBinding mtls: only certificate-bound tokens of the key count (one issued before the switch does not).
    if (apiKey!.tokenBinding === 'mtls' && verified.x5t === undefined) return { reason: 'mtls_required' };
    return { apiKey: apiKey!, scopes: verified.scopes };
  }

  /** Who a secret or client id credential names, or why it names nobody usable. */
  private async identifySecret(
    credential: Exclude<Credential, { kind: 'bearer' | 'dpop' }>,
    sourceAddress: string | undefined,
  ): Promise<Identity> {
    const now = this.now();
    const apiKey = this.replica.apiKey(credential.clientId);
    if (credential.kind === 'clientId') {
      if (!apiKey?.allowClientIdOnly) return { reason: 'unknown_api_key' };
    } else {
      const hashes = (apiKey?.secrets ?? [])
        .filter((secret) => secret.validUntil === undefined || secret.validUntil > now)
        .map((secret) => secret.hash);
      // Refused before any hashing once this id and address (or this address) failed too often, or
      // the id is past its budget from an address it never authenticated from (issue 22).
      const wait = await this.guards.failures?.admit(credential.clientId, sourceAddress);
      if (wait !== undefined) return { reason: 'too_many_failures', retryAfter: wait };
      // Same work for an unknown id and a wrong secret (see secret-hash.ts).
      let matches: boolean;
      try {
        matches = await verifySecret(credential.clientSecret, hashes);
      } catch (error) {
        if (error instanceof SecretHashBusy) return { reason: 'busy', retryAfter: 1 };
        throw error;
      }
      if (!matches || !apiKey) {
        await this.guards.failures?.failed(credential.clientId, sourceAddress);
        return { reason: 'bad_secret' };
      }
      await this.guards.failures?.succeeded(credential.clientId, sourceAddress);
    }
    // A sender-constrained key (tokenBinding dpop or mtls, or one this ext-authz does not know) is not
    // let in by its secret or id alone: that would bypass the binding. Said only once the secret matched.
    const state = apiKeyState(apiKey, now);
    if (state) return state;
    if (apiKey.tokenBinding !== undefined) return { reason: apiKey.tokenBinding === 'mtls' ? 'mtls_required' : 'dpop_required' };
    return { apiKey, scopes: apiKey.scopes };
  }

  private verifyToken(token: string, now: number): VerifiedToken | { reason: DenyReason } {
    const nowSeconds = Math.floor(now / 1000);
    // Collision resistance makes the digest as good a key as the token itself, at a twentieth of its size.
    const key = this.verified ? hash('sha256', token, 'binary') : '';
    let verified = this.verified?.get(key);
    if (!verified) {
      if (!JWT_CHARACTERS.test(token)) return { reason: 'malformed_credential' };
      const result = verifyJws(token, this.replica.verificationKey);
      if (!result.ok)
        return {
          reason:
            result.reason === 'malformed'
              ? 'malformed_credential'
              : result.reason === 'algorithm_mismatch'
                ? 'bad_signature'
                : result.reason,
        };
      const { header, claims } = result;
      if (
        header.typ !== 'at+jwt' ||
        typeof claims.client_id !== 'string' ||
        typeof claims.jti !== 'string' ||
        typeof claims.exp !== 'number' ||
        typeof claims.nbf !== 'number'
      ) {
        return { reason: 'not_access_token' };
      }
      if (claims.iss !== this.replica.issuer) return { reason: 'wrong_issuer' };
      // RFC 9449 §7 and RFC 8705 §3: a bound token is usable only with a proof of its key (jkt) and/or
      // over a connection with its certificate (x5t#S256); a cnf with neither, or another member, never.
      const cnf = claims.cnf as Record<string, unknown> | undefined;
      if (cnf !== undefined && !boundAsWeCheck(cnf)) return { reason: 'sender_constrained' };
      const aud =
        typeof claims.aud === 'string'
          ? [claims.aud]
          : Array.isArray(claims.aud)
            ? claims.aud.filter((value): value is string => typeof value === 'string')
            : [];
      const scope = typeof claims.scope === 'string' ? claims.scope : '';
      verified = {
        clientId: this.intern(`c${claims.client_id}`, () => claims.client_id as string),
        jti: claims.jti,
        exp: claims.exp,
        nbf: claims.nbf,
        aud: this.intern(`a${JSON.stringify(aud)}`, () => Object.freeze(aud)),
        scopes: this.intern(`s${scope}`, () => Object.freeze(scope.split(' ').filter(Boolean))),
        kid: this.intern(`k${header.kid as string}`, () => header.kid as string),
      };
      if (cnf?.jkt !== undefined) verified.jkt = cnf.jkt as string;
      if (cnf?.['x5t#S256'] !== undefined) verified.x5t = cnf['x5t#S256'] as string;
      if (verified.exp > nowSeconds) this.verified?.set(key, verified, { ttl: (verified.exp - nowSeconds) * 1000 });
    } else if (!this.replica.verificationKey(verified.kid)) {
      // Its key was deleted or its verification window closed since it was cached.
      return { reason: 'unknown_key' };
    }
    if (verified.exp <= nowSeconds) return { reason: 'expired' };
    if (verified.nbf > nowSeconds) return { reason: 'not_yet_valid' };
    return verified;
  }

  /** One shared copy of what many cached tokens hold alike (only tokens that passed verification get here). */
  private intern<T extends string | readonly string[]>(key: string, make: () => T): T {
    let value = this.interned.get(key) as T | undefined;
    if (value === undefined) {
      if (this.interned.size >= INTERNED_MAX) this.interned.clear();
      value = make();
      this.interned.set(key, value);
    }
    return value;
  }
}

/** A refused proof as a denial reason: use_dpop_nonce carries the nonce to send; anything else is invalid_dpop_proof. */
function proofRefused(error: unknown): Identity {
  if (error instanceof OAuthError && error.code === 'use_dpop_nonce')
    return { reason: 'use_dpop_nonce', dpopNonce: error.headers?.[DPOP_NONCE_HEADER] };
  if (error instanceof OAuthError) return { reason: 'invalid_dpop_proof' };
  throw error;
}

/** RFC 8705 §3: a certificate-bound token counts only when the SHA-256 of the connection's certificate is its x5t#S256. */
function certificateRefusal(verified: VerifiedToken, request: AuthzRequest): { reason: DenyReason } | undefined {
  if (verified.x5t === undefined || forwardedThumbprint(request.clientCertificate) === verified.x5t) return undefined;
  return { reason: 'wrong_certificate' };
}

/** A cnf we can enforce: an object with jkt and/or x5t#S256 (strings), and no other member. */
function boundAsWeCheck(cnf: unknown): boolean {
  if (typeof cnf !== 'object' || cnf === null || Array.isArray(cnf)) return false;
  const members = Object.keys(cnf);
  const record = cnf as Record<string, unknown>;
  return (
    members.length > 0 &&
    members.every((member) => (member === 'jkt' || member === 'x5t#S256') && typeof record[member] === 'string' && record[member] !== '')
  );
}

function apiKeyState(apiKey: DataPlaneApiKey | undefined, now: number): { reason: DenyReason } | undefined {
  if (!apiKey) return { reason: 'unknown_api_key' };
  if (!apiKey.enabled) return { reason: 'disabled_api_key' };
  if (apiKey.validUntil !== undefined && apiKey.validUntil <= now) return { reason: 'expired_api_key' };
  return undefined;
}

/** The first credential an enabled extractor finds, in Otoroshi's order; 'malformed' for a broken one. */
function extractCredential(policy: RoutePolicy, headers: AuthzRequest['headers']): Credential | 'malformed' | undefined {
  const authorization = headers.authorization?.trim();
  const on = (name: ExtractorName) => policy.extractors.includes(name);
  if (on('bearer') && authorization && /^bearer\b/i.test(authorization)) {
    const match = BEARER.exec(authorization);
    return match?.[1] ? { kind: 'bearer', token: match[1], header: 'authorization' } : 'malformed';
  }
  if (on('bearer') && authorization && /^dpop\b/i.test(authorization)) {
    const match = DPOP.exec(authorization);
    return match?.[1] ? { kind: 'dpop', token: match[1], header: 'authorization' } : 'malformed';
  }
  if (on('basic') && authorization && /^basic\b/i.test(authorization)) {
    const match = BASIC.exec(authorization);
    if (!match || !/^[A-Za-z0-9+/]+={0,2}$/.test(match[1])) return 'malformed';
    const decoded = Buffer.from(match[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 1) return 'malformed';
    return {
      kind: 'secret',
      clientId: decoded.slice(0, colon),
      clientSecret: decoded.slice(colon + 1),
      headers: ['authorization'],
      scheme: 'Basic',
    };
  }
  const clientId = headers[policy.clientIdHeader];
  const clientSecret = headers[policy.clientSecretHeader];
  if (on('customHeaders') && clientId && clientSecret) {
    return { kind: 'secret', clientId, clientSecret, headers: [policy.clientIdHeader, policy.clientSecretHeader] };
  }
  if (on('clientId') && clientId) return { kind: 'clientId', clientId, headers: [policy.clientIdHeader] };
  return undefined;
}
