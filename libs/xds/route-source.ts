import { parseVersion } from '../core/data-plane';
import type { RouteDelta, RouteFeed } from '../core/route-feed';
import type { Route } from '../core/routes';

export interface FollowedRoutes {
  /** The routes as of the snapshot read at start. */
  routes: Route[];
  stop(): void;
}

const seqOf = (version: string) => parseVersion(version)?.seq ?? -1;

/** What the control plane is told: the whole set (after a snapshot), or the routes a delta changed. */
export type FollowedChange = { routes: Route[] } | { upserted: Route[]; removed: string[] };

/**
 * The whole route set, kept from the authority's route feed (libs/core/route-feed.ts): a snapshot,
 * then each delta applied to it; `onChange` gets each delta's routes (upserted, removed), and the
 * whole set after a new snapshot when the feed says `resync`. Resolves once the first snapshot is read, so the control
 * plane never serves an empty set to an Envoy that connects while it starts.
 */
export async function followRoutes(
  feed: Pick<RouteFeed, 'subscribe' | 'snapshot'>,
  onChange: (change: FollowedChange) => void,
  onError: (error: Error) => void,
): Promise<FollowedRoutes> {
  const byId = new Map<string, Route>();
  let loading = true;
  let buffered: RouteDelta[] = [];
  const apply = (delta: RouteDelta) => {
    for (const route of delta.upserted) byId.set(route.id, route);
    for (const id of delta.removed) byId.delete(id);
  };
  const load = async () => {
    loading = true;
    const snapshot = await feed.snapshot();
    byId.clear();
    for (const route of snapshot.routes) byId.set(route.id, route);
    // Deltas that came while the snapshot was read: those past its version go on top.
    const after = seqOf(snapshot.version);
    for (const delta of buffered) if (seqOf(delta.version) > after) apply(delta);
    buffered = [];
    loading = false;
  };
  // Subscribed first, in the same tick as the snapshot starts: no delta falls between them.
  const stop = feed.subscribe((event) => {
    if (event === 'resync') {
      load().then(
        () => onChange({ routes: [...byId.values()] }),
        (error: Error) => onError(error),
      );
      return;
    }
    if (loading) {
      buffered.push(event);
      return;
    }
    apply(event);
    onChange({ upserted: event.upserted, removed: event.removed });
  });
  try {
    await load();
  } catch (error) {
    stop();
    throw error;
  }
  return { routes: [...byId.values()], stop };
}
