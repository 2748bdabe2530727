/**
 * Routes as data (issue 19): Otoroshi's route shape where it fits (`id`, `name`, `enabled`,
 * `frontend.domains`, `backend.targets[]`, the Apikeys plugin's settings), validated here with no
 * framework and no store, so the admin API, the CLI, the seed data and the xDS builder share one
 * definition.
 *
 * Deviations from the shared shape (briefs' route-shape.md), all additive:
 * - `name` may be left out on input: it defaults to the id.
 * - `frontend.domains` are lower-cased; besides `foo.oto.tools`, `*.oto.tools` and `:port`, a pattern
 *   may end in `:*` (any port, as envoy/envoy.yaml writes `foo.oto.tools:*`) or be `*` alone (any host):
 *   the forms Envoy's virtual host `domains` accept.
 * - `apikeys.clientIdHeader` / `clientSecretHeader` are lower-cased (as libs/authz/config.ts does).
 * - `apikeys.publicPathPrefixes` are absolute paths and must start with `frontend.pathPrefix`.
 * - Two enabled routes conflict when they share a domain pattern (compared as written, after
 *   lower-casing) and the same pathPrefix; `*.oto.tools` and `foo.oto.tools` do not conflict (Envoy
 *   picks the exact one).
 */
import { z } from 'zod';
import { EXTRACTORS, type ExtractorName } from '../authz/config';

export type RouteExtractor = ExtractorName;
export const ROUTE_EXTRACTORS = EXTRACTORS;

/** Route ids: what follows `route_` in an API key's authorizedEntities, and Envoy's cluster name `route_<id>`. */
export const ROUTE_ID = z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, 'use 1 to 128 of A-Z a-z 0-9 . _ -');

/** The entity an API key's authorizedEntities names for this route (Otoroshi: "route_" + id). */
export function routeEntity(id: string): string {
  return `route_${id}`;
}

const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
const HOSTNAME = new RegExp(`^${LABEL}(?:\\.${LABEL})*$`);
/** `foo.oto.tools`, `*.oto.tools`, `*`, each with an optional `:port` or `:*`. */
const HOST_PATTERN = new RegExp(`^(?:\\*|(?:\\*\\.)?${LABEL}(?:\\.${LABEL})*)(?::(?:\\*|\\d{1,5}))?$`);

function portOf(pattern: string): number | undefined {
  const match = /:(\d{1,5})$/.exec(pattern);
  return match ? Number(match[1]) : undefined;
}

const domain = z
  .string()
  .max(253)
  .transform((value) => value.toLowerCase())
  .refine((value) => HOST_PATTERN.test(value), {
    message: 'not a host pattern: use foo.oto.tools or *.oto.tools, optionally with :port or :*',
  })
  .refine(
    (value) => {
      const port = portOf(value);
      return port === undefined || (port >= 1 && port <= 65535);
    },
    { message: 'port must be 1 to 65535' },
  );

/** A path: starts with `/`, printable ASCII with no space, `?` or `#` (a query or fragment is not a prefix). */
const PATH = z
  .string()
  .max(1024)
  .regex(/^\/[\x21-\x22\x24-\x3e\x40-\x7e]*$/, 'a path starting with / (printable ASCII, no space, ? or #)');

/** An HTTP header name (RFC 9110 token), lower-cased. */
const HEADER_NAME = z
  .string()
  .max(200)
  .regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'not an HTTP header name')
  .transform((name) => name.toLowerCase());

const SCOPE_TOKEN = z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, 'not a valid scope token (RFC 6749 §3.3)');

const targetHostname = z
  .string()
  .max(253)
  .transform((value) => value.toLowerCase())
  .refine((value) => HOSTNAME.test(value) || z.ipv6().safeParse(value).success, {
    message: 'a host name or IP address',
  });

export const routeTargetSchema = z
  .object({
    hostname: targetHostname,
    port: z.number().int().min(1, 'port must be 1 to 65535').max(65535, 'port must be 1 to 65535'),
    tls: z.boolean().default(false),
    weight: z.number().int().min(1).max(128).default(1),
  })
  .strict();

const unique = <T>(values: T[]) => new Set(values).size === values.length;

const apikeysSchema = z
  .object({
    enabled: z.boolean().default(true),
    extractors: z.array(z.enum(EXTRACTORS)).min(1).refine(unique, { message: 'each extractor at most once' }).default(['bearer']),
    /** Left out: `[route_<id>]`, filled in by routeSchema. */
    authorizedEntities: z
      .array(z.string().regex(/^(route|group|service)_[A-Za-z0-9._~@+-]+$/, 'use route_<name> or group_<name>'))
      .max(1000)
      .optional(),
    requiredScopes: z.array(SCOPE_TOKEN).max(200).default([]),
    audiences: z.array(z.string().min(1).max(2000)).max(100).default([]),
    stripCredential: z.boolean().default(false),
    clientIdHeader: HEADER_NAME.default('otoroshi-client-id'),
    clientSecretHeader: HEADER_NAME.default('otoroshi-client-secret'),
    quotas: z.boolean().default(true),
    quotaFailure: z.enum(['open', 'closed']).default('open'),
    publicPathPrefixes: z.array(PATH).max(100).default([]),
  })
  .strict();

/**
 * A route as written by a client (admin API body, CLI, seed): everything but `id` (and
 * `frontend.domains`, `backend.targets`) has a default. The output is a RouteSpec.
 */
export const routeSchema = z
  .object({
    id: ROUTE_ID,
    name: z
      .string()
      .min(1)
      .max(200)
      // biome-ignore lint/suspicious/noControlCharactersInRegex: the control characters are what it refuses
      .regex(/^[^\u0000-\u001f\u007f]*$/, 'no control characters')
      .optional(),
    description: z.string().max(2000).default(''),
    enabled: z.boolean().default(true),
    frontend: z
      .object({
        domains: z.array(domain).min(1, 'at least one domain').max(100).refine(unique, { message: 'each domain at most once' }),
        pathPrefix: PATH.default('/'),
      })
      .strict(),
    backend: z
      .object({
        targets: z.array(routeTargetSchema).min(1, 'at least one target').max(100),
        connectTimeoutMs: z.number().int().min(1).max(600_000).default(2000),
        /** 0: no timeout. */
        requestTimeoutMs: z.number().int().min(0).max(3_600_000).default(30_000),
      })
      .strict(),
    apikeys: apikeysSchema.prefault({}),
    metadata: z.record(z.string().max(200), z.string().max(4000)).default({}),
  })
  .strict()
  .superRefine((route, context) => {
    route.apikeys.publicPathPrefixes.forEach((prefix, index) => {
      if (!prefix.startsWith(route.frontend.pathPrefix)) {
        context.addIssue({
          code: 'custom',
          path: ['apikeys', 'publicPathPrefixes', index],
          message: `must start with frontend.pathPrefix (${route.frontend.pathPrefix})`,
        });
      }
    });
  })
  .transform((route) => ({
    ...route,
    name: route.name ?? route.id,
    apikeys: { ...route.apikeys, authorizedEntities: route.apikeys.authorizedEntities ?? [routeEntity(route.id)] },
  }));

export type RouteInput = z.input<typeof routeSchema>;
export type RouteTarget = z.output<typeof routeTargetSchema>;
/** A valid route without the store's timestamps. */
export type RouteSpec = z.output<typeof routeSchema>;
export type RouteApikeys = RouteSpec['apikeys'];

/** A route as the store keeps and the API shows it. */
export interface Route extends RouteSpec {
  /** ISO 8601, set by the store. */
  createdAt: string;
  updatedAt: string;
}

/** One reason a route is refused: the field's path (zod's issue path, joined with `.`) and why. */
export interface RouteIssue {
  path: string;
  message: string;
}

export type RouteValidation = { ok: true; route: RouteSpec } | { ok: false; issues: RouteIssue[] };

/** `input` checked and completed with defaults, or the issues naming each bad field. */
export function validateRoute(input: unknown): RouteValidation {
  const result = routeSchema.safeParse(input);
  if (result.success) return { ok: true, route: result.data };
  return { ok: false, issues: result.error.issues.map((issue) => ({ path: issue.path.join('.'), message: issue.message })) };
}

type Claimant = Pick<RouteSpec, 'id' | 'enabled' | 'frontend'>;

/**
 * Where `candidate` claims a (domain, pathPrefix) an other enabled route already claims: one
 * issue per such domain, at `frontend.domains.<index>`. A disabled candidate claims nothing; a
 * route with the candidate's id is the one it replaces and is skipped.
 */
export function routeConflicts(candidate: Claimant, others: Iterable<Claimant>): RouteIssue[] {
  if (!candidate.enabled) return [];
  const issues: RouteIssue[] = [];
  for (const other of others) {
    if (!other.enabled || other.id === candidate.id || other.frontend.pathPrefix !== candidate.frontend.pathPrefix) continue;
    const claimed = new Set(other.frontend.domains.map((value) => value.toLowerCase()));
    candidate.frontend.domains.forEach((value, index) => {
      if (claimed.has(value.toLowerCase())) {
        issues.push({
          path: `frontend.domains.${index}`,
          message: `route ${other.id} already serves ${value} with pathPrefix ${candidate.frontend.pathPrefix}`,
        });
      }
    });
  }
  return issues;
}

/** Every conflict within a set of routes (the seed data, an import): each later route against the earlier ones. */
export function routeSetConflicts(routes: readonly Claimant[]): { id: string; issues: RouteIssue[] }[] {
  const found: { id: string; issues: RouteIssue[] }[] = [];
  routes.forEach((route, index) => {
    const issues = routeConflicts(route, routes.slice(0, index));
    if (issues.length) found.push({ id: route.id, issues });
  });
  return found;
}

/** The (domain, pathPrefix) pairs an enabled route serves: what two enabled routes may not share. */
export function routeClaims(route: Claimant): { domain: string; pathPrefix: string }[] {
  if (!route.enabled) return [];
  return route.frontend.domains.map((value) => ({ domain: value.toLowerCase(), pathPrefix: route.frontend.pathPrefix }));
}

/** The issues of `candidate`'s claims already held: `owners` maps a claimed domain (same pathPrefix) to the route holding it. */
export function claimIssues(candidate: Claimant, owners: ReadonlyMap<string, string>): RouteIssue[] {
  const issues: RouteIssue[] = [];
  candidate.frontend.domains.forEach((value, index) => {
    const owner = owners.get(value.toLowerCase());
    if (owner !== undefined && owner !== candidate.id) {
      issues.push({
        path: `frontend.domains.${index}`,
        message: `route ${owner} already serves ${value} with pathPrefix ${candidate.frontend.pathPrefix}`,
      });
    }
  });
  return issues;
}

/**
 * A write refused by the store because an enabled route already serves one of the (domain,
 * pathPrefix) pairs: checked in the write's transaction (a unique index), so two replicas cannot
 * both win. Nothing is written.
 */
export class RouteConflictError extends Error {
  constructor(readonly issues: RouteIssue[]) {
    super(issues.map((issue) => `${issue.path}: ${issue.message}`).join('; '));
    this.name = 'RouteConflictError';
  }
}
