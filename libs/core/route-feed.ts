import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { formatVersion } from './data-plane';
import type { Route } from './routes';
import { SerialPublisher } from './serial-publisher';
import type { AuthorityStore } from './store/repositories';

/**
 * Route changes as the control plane (the xDS builder) consumes them: `authority.routes`.
 *
 *   const off = authority.routes.subscribe((event) => ...);   // first, in the same tick as:
 *   const { version, routes } = await authority.routes.snapshot();
 *
 * Then every change of a route, by this process or another sharing the store (another replica,
 * through PostgreSQL LISTEN/NOTIFY; the CLI, through SQLite's data_version), arrives as one
 * RouteDelta: the current state of just the routes that changed (`upserted`), and the ids of those
 * deleted (`removed`). Deltas carry whole routes, so applying one twice does no harm; a snapshot
 * read after a change may already hold it and the delta repeats it. `'resync'`: the feed lost
 * track (the change log was pruned past it, or a restored backup gave the store a new id):
 * read a snapshot again.
 *
 * Versions are `<store id>:<position>:<tag>` of the change log (data-plane.ts formatVersion):
 * every replica of one store gives the same route state the same version. A disabled route is in
 * the snapshot and in `upserted` (with enabled: false); only a deleted one is `removed`.
 */
export interface RouteDelta {
  version: string;
  /** The version this delta follows on from. */
  baseVersion: string;
  upserted: Route[];
  removed: string[];
}

export interface RouteSnapshot {
  version: string;
  /** Every route, in id order. */
  routes: Route[];
}

export type RouteListener = (event: RouteDelta | 'resync') => void;

/** Changes read per delta, and routes per snapshot page. */
const CHANGES_PER_READ = 5000;
const SNAPSHOT_PAGE = 1000;
const DEBOUNCE_MS = 10;
const RETRY_FIRST_MS = 100;
const RETRY_MAX_MS = 10_000;

export class RouteFeed {
  /** Where the feed has read the change log to. */
  private seq = 0;
  private storeId: string;
  /** The version of the route state last published: the position of the last route change read (or of the start). */
  private current = '';
  private readonly listeners = new Set<RouteListener>();
  private readonly publisher: SerialPublisher;
  private readonly unsubscribeStore: () => void;
  private readonly ready: Promise<void>;

  constructor(
    private readonly store: AuthorityStore,
    onError: (error: Error) => void,
  ) {
    this.storeId = store.changes.storeId;
    this.ready = this.moveToHead();
    this.publisher = new SerialPublisher(() => this.publishOnce(), {
      debounceMs: DEBOUNCE_MS,
      retryFirstMs: RETRY_FIRST_MS,
      retryMaxMs: RETRY_MAX_MS,
      onError,
      ready: this.ready,
    });
    this.unsubscribeStore = store.onChange(() => this.publisher.schedule());
  }

  /** Resolves once the feed knows where the change log stands. */
  start(): Promise<void> {
    return this.ready;
  }

  /** The version of the last route state published. */
  get version(): string {
    return this.current;
  }

  subscribe(listener: RouteListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Every route, read a page at a time, labelled with the version published when called. */
  async snapshot(): Promise<RouteSnapshot> {
    await this.ready;
    const version = this.version;
    const routes: Route[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.store.routes.listPage({ after, limit: SNAPSHOT_PAGE });
      routes.push(...page);
      if (page.length < SNAPSHOT_PAGE) break;
      after = page[page.length - 1].id;
      await yieldToEventLoop();
    }
    return { version, routes };
  }

  close(): void {
    this.publisher.close();
    this.unsubscribeStore();
    this.listeners.clear();
  }

  private async moveToHead(): Promise<void> {
    const head = await this.store.changes.head();
    const tag = (await this.store.changes.tagAt(head)) ?? '-';
    this.seq = head;
    this.current = formatVersion(this.storeId, head, tag);
  }

  /** One delta (or a resync); true when the log has more past the changes read. */
  private async publishOnce(): Promise<boolean> {
    if (this.store.changes.storeId !== this.storeId) {
      this.storeId = this.store.changes.storeId;
      await this.moveToHead();
      this.listeners.forEach((listener) => listener('resync'));
      return false;
    }
    const changes = await this.store.changes.since(this.seq, CHANGES_PER_READ);
    if (changes === undefined) {
      await this.moveToHead();
      this.listeners.forEach((listener) => listener('resync'));
      return false;
    }
    if (!changes.length) return false;
    const more = changes.length === CHANGES_PER_READ;
    const last = changes[changes.length - 1];
    const routeChanges = changes.filter((change) => change.entity === 'route');
    const ids = [...new Set(routeChanges.map((change) => change.id))];
    const routes = ids.length ? await this.store.routes.getMany(ids) : [];
    this.seq = last.seq;
    // Changes of other entities move the reading position only: the route state, and its version, stay.
    if (!ids.length) return more;
    const newest = routeChanges[routeChanges.length - 1];
    const delta: RouteDelta = {
      version: formatVersion(this.storeId, newest.seq, newest.tag),
      baseVersion: this.current,
      upserted: [],
      removed: [],
    };
    this.current = delta.version;
    ids.forEach((id, index) => {
      const route = routes[index];
      if (route) delta.upserted.push(route);
      else delta.removed.push(id);
    });
    this.listeners.forEach((listener) => listener(delta));
    return more;
  }
}
