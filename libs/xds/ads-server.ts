import type { Metadata, Server, ServerDuplexStream, ServiceDefinition } from '@grpc/grpc-js';
import { status as GrpcStatus } from '@grpc/grpc-js';
import { clientText } from '../core/client-text';
import { CLUSTER, CLUSTER_LOAD_ASSIGNMENT, envoyType, LISTENER, XDS_TYPES, type XdsTypeUrl } from './envoy-types';
import { routeIdOf, type XdsChanges, type XdsResource, type XdsResourceBuilder, type XdsRoute, type XdsSnapshot } from './resources';

/**
 * envoy.service.discovery.v3.AggregatedDiscoveryService on a grpc-js server: the authority as
 * Envoy's control plane (ADS). Both variants of the protocol:
 *
 * - DeltaAggregatedResources (incremental, preferred): per stream and type, the version of each
 *   resource the client holds; a change sends only the resources whose version moved and the
 *   names removed. A reconnecting Envoy states what it holds (initial_resource_versions) and gets
 *   only what differs, so a restart of the authority, or another replica, resends nothing that did
 *   not change.
 * - StreamAggregatedResources (state of the world): the whole set of a type (the requested names
 *   for routes and endpoints) when its version moves.
 *
 * A resource's version is a hash of its bytes (the same on every replica); a response's nonce is
 * the stream's counter. A request naming the last nonce with no error_detail is an ACK; with
 * error_detail a NACK: Envoy keeps its last accepted config, the error is recorded for the routes
 * the rejected response carried (nacks(), onNack), and the rejected resources are not sent again
 * until they change (a NACK is not a request for a resend).
 *
 * Pushes go in make-before-break order: clusters and endpoints before the listener and routes
 * that name them, and clusters removed last, after the routes no longer point at them.
 */

export interface AdsServerOptions {
  /** Whether a stream's metadata may read the config (the data plane token); refused with UNAUTHENTICATED otherwise. */
  authorize?: (metadata: Metadata) => boolean;
  /** A NACK: the type, the routes of the rejected response, Envoy's message. */
  onNack?: (nack: XdsNack) => void;
  log?: { info(object: object, message: string): void; warn(object: object, message: string): void };
}

export interface XdsNack {
  typeUrl: string;
  /** The routes the rejected response carried (their resources, or the routes changed in the rejected RouteConfiguration). */
  routeIds: string[];
  /** Envoy's error_detail (bounded: its start and its end). */
  message: string;
  /** Why, when Envoy says it in a form known here (its validation error), else the message's last line. */
  reason: string;
  node: string;
  at: string;
}

const ADS_SERVICE = '/envoy.service.discovery.v3.AggregatedDiscoveryService/';
const RECENT_NACKS = 100;
/** A name the client subscribed to that does not exist: said once (removed_resources), so Envoy stops waiting for it. */
const ABSENT = '';

type DeltaRequest = {
  node?: { id?: string };
  type_url?: string;
  resource_names_subscribe?: string[];
  resource_names_unsubscribe?: string[];
  initial_resource_versions?: Record<string, string>;
  response_nonce?: string;
  error_detail?: { code?: number; message?: string };
};
type SotwRequest = {
  version_info?: string;
  node?: { id?: string };
  resource_names?: string[];
  type_url?: string;
  response_nonce?: string;
  error_detail?: { code?: number; message?: string };
};

/** A route set to rebuild from, or a change of some routes. */
type RouteChange = { routes: readonly XdsRoute[] } | { upserted: readonly XdsRoute[]; removed: readonly string[] };

/** What a response carried, to name the routes of a NACK. */
interface Sent {
  routeIds: string[];
}

const WILDCARD_TYPES: ReadonlySet<string> = new Set([LISTENER, CLUSTER]);

const types = () => ({
  deltaRequest: envoyType('envoy.service.discovery.v3.DeltaDiscoveryRequest'),
  deltaResponse: envoyType('envoy.service.discovery.v3.DeltaDiscoveryResponse'),
  sotwRequest: envoyType('envoy.service.discovery.v3.DiscoveryRequest'),
  sotwResponse: envoyType('envoy.service.discovery.v3.DiscoveryResponse'),
});

export class AdsServer {
  private snapshot: XdsSnapshot;
  private snapshotVersion = 0;
  /** Routes whose resources changed in the last rebuild: the ones a rejected RouteConfiguration is blamed on. */
  private changedRoutes: string[] = [];
  private queued: RouteChange[] = [];
  private rebuildScheduled = false;
  private readonly streams = new Set<XdsStream>();
  private readonly byRoute = new Map<string, XdsNack>();
  private readonly recent: XdsNack[] = [];
  private readonly types = types();
  nackCount = 0;
  /** Resources sent, by type URL, over every stream (a resumed Envoy should need few). */
  readonly resourcesSent = new Map<string, number>();

  constructor(
    private readonly builder: XdsResourceBuilder,
    routes: readonly XdsRoute[],
    private readonly options: AdsServerOptions = {},
  ) {
    this.snapshot = builder.build(routes);
  }

  /** The whole route set: rebuilt on the next turn of the event loop (changes within one turn are one push). */
  setRoutes(routes: readonly XdsRoute[]): void {
    // What came before a whole set is replaced by it.
    this.queued = [{ routes }];
    this.scheduleRebuild();
  }

  /** Some routes changed (`upserted` as they now are, `removed` deleted): applied on the next turn, with whatever else came in it. */
  changeRoutes(upserted: readonly XdsRoute[], removed: readonly string[]): void {
    this.queued.push({ upserted, removed });
    this.scheduleRebuild();
  }

  private scheduleRebuild(): void {
    if (this.rebuildScheduled) return;
    this.rebuildScheduled = true;
    setImmediate(() => {
      this.rebuildScheduled = false;
      const queued = this.queued;
      this.queued = [];
      this.applyAll(queued);
    });
  }

  /** Rebuilds from the whole route set now and pushes to every stream. */
  apply(routes: readonly XdsRoute[]): void {
    this.applyAll([{ routes }]);
  }

  private applyAll(queued: readonly RouteChange[]): void {
    const changes = new Map<XdsTypeUrl, Set<string>>();
    const changedRoutes = new Set<string>();
    for (const change of queued) {
      this.snapshot = 'routes' in change ? this.builder.build(change.routes) : this.builder.update(change.upserted, change.removed);
      for (const id of this.builder.changed) changedRoutes.add(id);
      for (const [typeUrl, names] of this.builder.changedNames) {
        const all = changes.get(typeUrl);
        if (!all) changes.set(typeUrl, new Set(names));
        else for (const name of names) all.add(name);
      }
    }
    this.changedRoutes = [...changedRoutes];
    let any = false;
    for (const names of changes.values()) if (names.size) any = true;
    if (!any) return;
    this.snapshotVersion++;
    // Every stream held the previous snapshot as far as it wanted it: only the names that moved need a look.
    for (const stream of this.streams) stream.pushAll(changes);
  }

  current(): XdsSnapshot {
    return this.snapshot;
  }

  get version(): string {
    return String(this.snapshotVersion);
  }

  /** The last NACK of each route still rejected (cleared when a later response carrying the route is accepted). */
  nacks(): ReadonlyMap<string, XdsNack> {
    return this.byRoute;
  }

  recentNacks(): readonly XdsNack[] {
    return this.recent;
  }

  get connectedStreams(): number {
    return this.streams.size;
  }

  /** Registers both ADS methods on a grpc-js server. */
  addTo(server: Pick<Server, 'addService'>): void {
    const { deltaRequest, deltaResponse, sotwRequest, sotwResponse } = this.types;
    const decode = (type: typeof deltaRequest) => (bytes: Buffer) =>
      type.toObject(type.decode(bytes), { longs: Number, enums: String, arrays: true, objects: true });
    const definition: ServiceDefinition = {
      DeltaAggregatedResources: {
        path: `${ADS_SERVICE}DeltaAggregatedResources`,
        requestStream: true,
        responseStream: true,
        requestSerialize: (message: object) => Buffer.from(deltaRequest.encode(message).finish()),
        requestDeserialize: decode(deltaRequest),
        responseSerialize: (message: object) => Buffer.from(deltaResponse.encode(message).finish()),
        responseDeserialize: decode(deltaResponse),
      },
      StreamAggregatedResources: {
        path: `${ADS_SERVICE}StreamAggregatedResources`,
        requestStream: true,
        responseStream: true,
        requestSerialize: (message: object) => Buffer.from(sotwRequest.encode(message).finish()),
        requestDeserialize: decode(sotwRequest),
        responseSerialize: (message: object) => Buffer.from(sotwResponse.encode(message).finish()),
        responseDeserialize: decode(sotwResponse),
      },
    };
    server.addService(definition, {
      DeltaAggregatedResources: (call: ServerDuplexStream<DeltaRequest, object>) => this.open(call, new DeltaStream(this, call)),
      StreamAggregatedResources: (call: ServerDuplexStream<SotwRequest, object>) => this.open(call, new SotwStream(this, call)),
    });
  }

  /** Ends every stream (at shutdown): Envoy keeps its config and reconnects, here or elsewhere. */
  endAll(): void {
    for (const stream of this.streams) stream.end();
    this.streams.clear();
  }

  private open(call: ServerDuplexStream<unknown, object>, stream: XdsStream): void {
    if (this.options.authorize && !this.options.authorize(call.metadata)) {
      call.emit('error', { code: GrpcStatus.UNAUTHENTICATED, details: 'ADS needs the data plane or admin bearer token' });
      return;
    }
    this.streams.add(stream);
    const forget = () => this.streams.delete(stream);
    call.on('data', (request: DeltaRequest & SotwRequest) => {
      try {
        stream.onRequest(request);
      } catch (error) {
        this.options.log?.warn({ err: (error as Error).message }, 'xds: bad request; stream ended');
        forget();
        call.emit('error', { code: GrpcStatus.INVALID_ARGUMENT, details: 'bad discovery request' });
      }
    });
    call.on('end', () => {
      forget();
      call.end();
    });
    call.on('error', forget);
    call.on('cancelled', forget);
  }

  /** @internal */
  countSent(typeUrl: string, count: number): void {
    this.resourcesSent.set(typeUrl, (this.resourcesSent.get(typeUrl) ?? 0) + count);
  }

  /** @internal a stream's ACK of a response: the routes it carried are no longer rejected (for that type). */
  accepted(typeUrl: string, sent: Sent): void {
    for (const id of sent.routeIds) if (this.byRoute.get(id)?.typeUrl === typeUrl) this.byRoute.delete(id);
  }

  /** @internal a stream's NACK. */
  rejected(typeUrl: string, sent: Sent, message: string, node: string): void {
    const nack: XdsNack = {
      typeUrl,
      routeIds: sent.routeIds,
      message: bounded(message),
      reason: reasonOf(message),
      node,
      at: new Date().toISOString(),
    };
    this.nackCount++;
    for (const id of sent.routeIds) this.byRoute.set(id, nack);
    this.recent.push(nack);
    if (this.recent.length > RECENT_NACKS) this.recent.shift();
    this.options.log?.warn(
      { typeUrl, node, routes: sent.routeIds.slice(0, 20), error: message.slice(0, 2000) },
      'xds: Envoy rejected a config (NACK)',
    );
    this.options.onNack?.(nack);
  }

  /** @internal the routes a response of this type with these resources carries. */
  routesOf(typeUrl: string, names: Iterable<string>): string[] {
    if (typeUrl === CLUSTER || typeUrl === CLUSTER_LOAD_ASSIGNMENT) {
      const ids: string[] = [];
      for (const name of names) {
        const id = routeIdOf(name);
        if (id !== undefined) ids.push(id);
      }
      return ids;
    }
    return typeUrl === LISTENER ? [] : this.changedRoutes;
  }
}

/** Envoy's error, kept to MAX_ERROR characters: its start (what was rejected) and its end (why). */
const MAX_ERROR = 4000;
/**
 * Envoy 1.40 writes a validation failure as the rejected message's text dump then
 * `Proto constraint validation failed (<what>)`, and cuts error_detail at 4 KiB: on a large
 * RouteConfiguration the why may be cut off (Envoy's log has it whole).
 */
export function reasonOf(message: string): string {
  const validation = /Proto constraint validation failed \(([^\n]*)\)/.exec(message);
  if (validation) return validation[1].slice(0, 1000);
  if (message.trimEnd().endsWith('...(truncated)'))
    return 'rejected; Envoy cut its error at 4 KiB before the reason (its log has it whole)';
  const lines = message.split('\n').filter((line) => line.trim() !== '');
  return (lines.at(-1) ?? '').trim().slice(0, 1000);
}

function bounded(message: string): string {
  return message.length <= MAX_ERROR ? message : `${message.slice(0, MAX_ERROR / 2)}\n…\n${message.slice(-MAX_ERROR / 2)}`;
}

interface XdsStream {
  onRequest(request: DeltaRequest & SotwRequest): void;
  /** The snapshot moved by `changes` (the names each type's build changed). */
  pushAll(changes: XdsChanges): void;
  end(): void;
}

interface DeltaTypeState {
  wildcard: boolean;
  subscribed: Set<string>;
  /** Version of each resource the client holds (as we last sent it, or as it said on connecting). */
  held: Map<string, string>;
  inFlight: Map<string, Sent>;
}

class DeltaStream implements XdsStream {
  private readonly state = new Map<string, DeltaTypeState>();
  private nonce = 0;
  private node = '';

  constructor(
    private readonly server: AdsServer,
    private readonly call: ServerDuplexStream<DeltaRequest, object>,
  ) {}

  onRequest(request: DeltaRequest): void {
    const typeUrl = request.type_url ?? '';
    if (request.node?.id) this.node = clientText(request.node.id);
    if (!XDS_TYPES.includes(typeUrl as XdsTypeUrl)) return;
    let state = this.state.get(typeUrl);
    let changed = false;
    const first = !state;
    if (!state) {
      const subscribe = request.resource_names_subscribe ?? [];
      state = {
        wildcard: WILDCARD_TYPES.has(typeUrl) && (subscribe.length === 0 || subscribe.includes('*')),
        subscribed: new Set(),
        held: new Map(Object.entries(request.initial_resource_versions ?? {})),
        inFlight: new Map(),
      };
      this.state.set(typeUrl, state);
      changed = true;
    }
    if (request.response_nonce) {
      const sent = state.inFlight.get(request.response_nonce);
      state.inFlight.delete(request.response_nonce);
      if (sent) {
        if (request.error_detail?.message !== undefined || request.error_detail?.code)
          this.server.rejected(typeUrl, sent, request.error_detail?.message ?? '', this.node);
        else this.server.accepted(typeUrl, sent);
      }
    }
    // Names newly subscribed to: what a later request makes the server look at (not every resource).
    let added: string[] | undefined = [];
    for (const name of request.resource_names_subscribe ?? []) {
      if (name === '*') {
        if (!state.wildcard) {
          changed = true;
          added = undefined;
        }
        state.wildcard = true;
      } else if (!state.subscribed.has(name)) {
        state.subscribed.add(name);
        added?.push(name);
        // A later subscription asks for the resource again (Envoy does so when it lost it); on the
        // first request, initial_resource_versions say what it already holds.
        if (!first) state.held.delete(name);
        changed = true;
      }
    }
    for (const name of request.resource_names_unsubscribe ?? []) {
      if (name === '*') state.wildcard = false;
      state.subscribed.delete(name);
      state.held.delete(name);
    }
    if (first) this.push(typeUrl as XdsTypeUrl, 'both', true);
    else if (changed) this.push(typeUrl as XdsTypeUrl, 'both', false, added);
  }

  pushAll(changes: XdsChanges): void {
    for (const typeUrl of XDS_TYPES) {
      const names = changes.get(typeUrl);
      if (names?.size) this.push(typeUrl, typeUrl === CLUSTER ? 'upserts' : 'both', false, undefined, names);
    }
    const clusters = changes.get(CLUSTER);
    if (clusters?.size) this.push(CLUSTER, 'removals', false, undefined, clusters);
  }

  end(): void {
    this.call.end();
  }

  /**
   * Sends what the client lacks of this type: among `only` when given (names just subscribed to),
   * among `moved` when given (the names a rebuild changed: the client held the rest as they are), else among all.
   */
  private push(
    typeUrl: XdsTypeUrl,
    what: 'both' | 'upserts' | 'removals',
    first: boolean,
    only?: string[],
    moved?: ReadonlySet<string>,
  ): void {
    const state = this.state.get(typeUrl);
    if (!state) return;
    const current = this.server.current().get(typeUrl) ?? new Map<string, XdsResource>();
    const resources: XdsResource[] = [];
    const removed: string[] = [];
    const wanted = (name: string) => state.wildcard || state.subscribed.has(name);
    if (only) {
      for (const name of only) {
        const item = current.get(name);
        if (item && state.held.get(name) !== item.version) resources.push(item);
        else if (!item && !state.held.has(name)) removed.push(name);
      }
    } else if (moved) {
      for (const name of moved) {
        const item = current.get(name);
        if (item) {
          if (what !== 'removals' && wanted(name) && state.held.get(name) !== item.version) resources.push(item);
        } else if (what !== 'upserts' && state.held.has(name) && state.held.get(name) !== ABSENT) removed.push(name);
      }
    } else {
      if (what !== 'removals') {
        for (const [name, item] of current) if (wanted(name) && state.held.get(name) !== item.version) resources.push(item);
      }
      if (what !== 'upserts') {
        for (const name of state.held.keys()) if (!current.has(name) && state.held.get(name) !== ABSENT) removed.push(name);
        for (const name of state.subscribed) if (!current.has(name) && !state.held.has(name)) removed.push(name);
      }
    }
    if (!resources.length && !removed.length && !first) return;
    for (const item of resources) state.held.set(item.name, item.version);
    this.server.countSent(typeUrl, resources.length);
    for (const name of removed) {
      if (state.subscribed.has(name)) state.held.set(name, ABSENT);
      else state.held.delete(name);
    }
    const nonce = String(++this.nonce);
    state.inFlight.set(nonce, {
      routeIds: this.server.routesOf(
        typeUrl,
        resources.map((item) => item.name),
      ),
    });
    this.call.write({
      system_version_info: this.server.version,
      type_url: typeUrl,
      nonce,
      resources: resources.map((item) => ({ name: item.name, version: item.version, resource: { type_url: typeUrl, value: item.value } })),
      removed_resources: removed,
    });
  }
}

interface SotwTypeState {
  names: Set<string>;
  wildcard: boolean;
  /** The version of the last response (accepted or not): a NACK does not make it sent again. */
  sentVersion: string | undefined;
  lastNonce: string | undefined;
  inFlight: Sent | undefined;
}

class SotwStream implements XdsStream {
  private readonly state = new Map<string, SotwTypeState>();
  private nonce = 0;
  private node = '';

  constructor(
    private readonly server: AdsServer,
    private readonly call: ServerDuplexStream<SotwRequest, object>,
  ) {}

  onRequest(request: SotwRequest): void {
    const typeUrl = request.type_url ?? '';
    if (request.node?.id) this.node = clientText(request.node.id);
    if (!XDS_TYPES.includes(typeUrl as XdsTypeUrl)) return;
    let state = this.state.get(typeUrl);
    const names = request.resource_names ?? [];
    if (!state) {
      state = { names: new Set(), wildcard: false, sentVersion: undefined, lastNonce: undefined, inFlight: undefined };
      this.state.set(typeUrl, state);
    } else if (request.response_nonce && request.response_nonce !== state.lastNonce) {
      // A reply to an older response: superseded by the one in flight.
      return;
    }
    if (request.response_nonce && state.inFlight) {
      if (request.error_detail?.message !== undefined || request.error_detail?.code)
        this.server.rejected(typeUrl, state.inFlight, request.error_detail?.message ?? '', this.node);
      else this.server.accepted(typeUrl, state.inFlight);
      state.inFlight = undefined;
    }
    state.wildcard = WILDCARD_TYPES.has(typeUrl) && (names.length === 0 || names.includes('*'));
    const before = [...state.names].sort().join('\n');
    state.names = new Set(names.filter((name) => name !== '*'));
    const namesChanged = before !== [...state.names].sort().join('\n');
    this.push(typeUrl as XdsTypeUrl, namesChanged || state.sentVersion === undefined);
  }

  pushAll(changes: XdsChanges): void {
    for (const typeUrl of XDS_TYPES) if (changes.get(typeUrl)?.size) this.push(typeUrl, false);
  }

  end(): void {
    this.call.end();
  }

  private push(typeUrl: XdsTypeUrl, force: boolean): void {
    const state = this.state.get(typeUrl);
    if (!state) return;
    const current = this.server.current().get(typeUrl) ?? new Map<string, XdsResource>();
    const resources = [...current.values()].filter((item) => state.wildcard || state.names.has(item.name));
    const version = resources.map((item) => `${item.name}=${item.version}`).join(',');
    if (!force && version === state.sentVersion) return;
    state.sentVersion = version;
    this.server.countSent(typeUrl, resources.length);
    const nonce = String(++this.nonce);
    state.lastNonce = nonce;
    state.inFlight = {
      routeIds: this.server.routesOf(
        typeUrl,
        resources.map((item) => item.name),
      ),
    };
    this.call.write({
      version_info: `${this.server.version}-${nonce}`,
      type_url: typeUrl,
      nonce,
      resources: resources.map((item) => ({ type_url: typeUrl, value: item.value })),
    });
  }
}
