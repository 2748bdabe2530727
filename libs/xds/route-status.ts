import type { XdsNack } from './ads-server';

/**
 * What the admin API shows of a route's life in Envoy (`status.xds` of GET /api/routes and
 * /api/routes/:id): as this authority's ADS streams report it, never stored.
 *
 * - `rejected`: an Envoy connected here refused (NACK) the last config carrying the route; it
 *   serves the config it accepted before. `error` is Envoy's reason, `message` its whole error
 *   (bounded), `type` the resource type refused, `node` the Envoy's node id, `at` when.
 * - `accepted`: at least one Envoy is connected here and none has refused the route's config.
 * - `pending`: no Envoy is connected to this authority (nothing has taken the route yet).
 */
export type RouteXdsStatus =
  | { state: 'accepted' | 'pending'; envoys: number }
  | { state: 'rejected'; envoys: number; error: string; message: string; type: string; node: string; at: string };

/** The part of the ADS server the status reads. */
export interface XdsStatusSource {
  readonly connectedStreams: number;
  nacks(): ReadonlyMap<string, XdsNack>;
}

export function routeXdsStatus(source: XdsStatusSource, routeId: string): RouteXdsStatus {
  const envoys = source.connectedStreams;
  const nack = source.nacks().get(routeId);
  if (nack) {
    return {
      state: 'rejected',
      envoys,
      error: nack.reason,
      message: nack.message,
      type: nack.typeUrl.slice(nack.typeUrl.lastIndexOf('.') + 1),
      node: nack.node,
      at: nack.at,
    };
  }
  return { state: envoys > 0 ? 'accepted' : 'pending', envoys };
}
