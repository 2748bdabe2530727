import type { AdminService } from './admin-service';
import { AdminError } from './errors';
import type { RouteInput } from './routes';
import type { AuthorityStore } from './store/repositories';

/**
 * The routes a new store starts with: what envoy/envoy.yaml and config/ext-authz.yaml served before
 * routes were data, so the tutorial answers with no step added.
 *
 * - `foo`: foo.oto.tools, bearer tokens of keys authorized on route_foo; `/public/` open to anyone.
 * - `bar`: bar.oto.tools, HTTP Basic or the Otoroshi-Client-Id / -Secret headers, credential
 *   stripped before the backend.
 *
 * Both go to the echo backend (`echo:8081` in docker compose; the local stack passes its own
 * address in ROUTES_SEED_BACKEND). The token authority's own host (oauth.oto.tools) is no stored
 * route: it stays a fixed part of Envoy's configuration, so no route change can take away the way
 * to reach the API that changes routes.
 */
export function seedRouteInputs(backend: { hostname: string; port: number }): RouteInput[] {
  const target = { hostname: backend.hostname, port: backend.port };
  return [
    {
      id: 'foo',
      name: 'foo',
      description: "The tutorial's route: bearer tokens from the client credentials flow only",
      frontend: { domains: ['foo.oto.tools', 'foo.oto.tools:*'], pathPrefix: '/' },
      backend: { targets: [target] },
      apikeys: { extractors: ['bearer'], authorizedEntities: ['route_foo'], publicPathPrefixes: ['/public/'] },
    },
    {
      id: 'bar',
      name: 'bar',
      description: "Otoroshi's other extractors: HTTP Basic or the Otoroshi-Client-Id / -Secret headers",
      frontend: { domains: ['bar.oto.tools', 'bar.oto.tools:*'], pathPrefix: '/' },
      backend: { targets: [target] },
      apikeys: { extractors: ['basic', 'customHeaders'], authorizedEntities: ['route_bar'], stripCredential: true },
    },
  ];
}

/** `host:port` of ROUTES_SEED_BACKEND. */
export function parseSeedBackend(text: string): { hostname: string; port: number } {
  const match = /^(.+):(\d{1,5})$/.exec(text);
  if (!match) throw new Error(`routes.seedBackend: host:port expected, got '${text}'`);
  return { hostname: match[1].replace(/^\[|\]$/g, ''), port: Number(match[2]) };
}

/**
 * Writes the seed routes once, on the first start of a store: when the audit log holds no route
 * change at all (it is never pruned), so routes deleted on purpose are not brought back at the next
 * start. Replicas starting together may both try: the one that loses finds the ids taken and moves on.
 */
export async function seedRoutesOnFirstStart(
  store: AuthorityStore,
  admin: AdminService,
  backend: { hostname: string; port: number },
): Promise<string[]> {
  if ((await store.audit.listPage({ entity: 'route', limit: 1 })).length) return [];
  const seeded: string[] = [];
  for (const input of seedRouteInputs(backend)) {
    try {
      await admin.createRoute(input);
      seeded.push(input.id);
    } catch (error) {
      if (!(error instanceof AdminError && (error.status === 409 || error.status === 400))) throw error;
    }
  }
  return seeded;
}
