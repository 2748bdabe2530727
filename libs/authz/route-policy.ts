import { policySchema, type RoutePolicy } from './config';

/**
 * A route's policy carried by Envoy itself, per route, in the ext_authz filter's
 * `check_settings.context_extensions` (CheckRequest.attributes.context_extensions), as the
 * authority's xDS control plane sets it (libs/xds/resources.ts). The keys:
 *
 *   route   the route's id: a name for metrics, logs and the WWW-Authenticate realm. Alone (no
 *           `policy`), it names a policy of config/ext-authz.yaml (`policies`), as envoy/envoy.yaml does.
 *   policy  the route's policy as JSON, policySchema's fields (libs/authz/config.ts): extractors,
 *           authorizedEntities, audiences, requiredScopes, stripCredential, clientIdHeader,
 *           clientSecretHeader, quotas, quotaFailure. Absent fields take their defaults. When
 *           present it is the policy, whatever config/ext-authz.yaml says about `route`.
 *
 * A `policy` that is not valid JSON or not a valid policy denies the call (unknown_policy, 403):
 * a route whose policy cannot be read is closed, never open.
 */
export const ROUTE_EXTENSION = 'route';
export const POLICY_EXTENSION = 'policy';

/** The `policy` value for a policy (the inverse of InlinePolicies.resolve). */
export function encodeInlinePolicy(policy: Partial<RoutePolicy>): string {
  return JSON.stringify(policy);
}

/** Distinct policy texts kept parsed: past it the cache starts again (a route set larger than this re-parses). */
const INLINE_CACHE_MAX = 50_000;

/** Parses `policy` values, each text once: the same route sends the same text on every call. */
export class InlinePolicies {
  private readonly parsed = new Map<string, RoutePolicy | null>();

  /** The policy of this text, or undefined when it is not one. */
  resolve(text: string): RoutePolicy | undefined {
    let policy = this.parsed.get(text);
    if (policy === undefined) {
      policy = parseInlinePolicy(text);
      if (this.parsed.size >= INLINE_CACHE_MAX) this.parsed.clear();
      this.parsed.set(text, policy);
    }
    return policy ?? undefined;
  }
}

function parseInlinePolicy(text: string): RoutePolicy | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  const parsed = policySchema.safeParse(value);
  return parsed.success ? parsed.data : null;
}
