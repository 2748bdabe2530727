import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { Writer } from 'protobufjs';
import type { RoutePolicy } from '../authz/config';
import { encodeInlinePolicy, POLICY_EXTENSION, ROUTE_EXTENSION } from '../authz/route-policy';
import { CERTIFICATE_UNVERIFIED_HEADER } from '../core/mtls';
import type { RouteSpec } from '../core/routes';
import {
  CLUSTER,
  CLUSTER_LOAD_ASSIGNMENT,
  duration,
  encodeMessage,
  envoyType,
  LISTENER,
  ROUTE_CONFIGURATION,
  TYPE_URL_PREFIX,
  type XdsTypeUrl,
} from './envoy-types';

/**
 * Stored routes (libs/core/routes.ts) as the Envoy resources the authority serves over ADS:
 *
 * - one Listener (the HTTP listener of envoy/envoy.yaml: HCM with ext_authz then the router),
 *   its routes by RDS over ADS; with `tls`, a second one (`ingress_https`) with the same routes
 *   behind a DownstreamTlsContext whose certificate and key are files Envoy reads itself;
 * - one RouteConfiguration: a virtual host per domain (its host part: the listener ignores the
 *   Host header's port, `ignore_port_in_host_matching`, so `foo.oto.tools`, `foo.oto.tools:*` and
 *   `foo.oto.tools:8080` are one virtual host), each with a route per Route claiming the domain
 *   (prefix match, longest first) and one per public path prefix (ext_authz off there); the
 *   authority's own host when configured; a `*` host answering 404 to whatever no route claims;
 * - a Cluster per route, `route_<id>`: EDS when every target is an IP address (a change of
 *   targets is then one ClusterLoadAssignment, no cluster warming), STRICT_DNS otherwise;
 * - the ClusterLoadAssignment of each EDS cluster.
 *
 * Each route's API-key policy travels to ext-authz in the ext_authz filter's per-route
 * `check_settings.context_extensions` (`route`: the id, `policy`: the policy as JSON, see
 * libs/authz/route-policy.ts); apikeys.enabled false is `ExtAuthzPerRoute { disabled: true }`.
 *
 * Routes in, bytes out, incrementally (XdsResourceBuilder): what a route yields is kept by the
 * route's content and each virtual host's encoding by its entries, so a change costs the changed
 * routes' encoding, their virtual hosts', and, when a virtual host changed, the copy of the
 * RouteConfiguration's bytes (~200 bytes a route) and a hash of the virtual hosts' hashes.
 */

/** Where the data plane's fixed parts are: names of the bootstrap's static clusters, the listener's address. */
export interface XdsPlacement {
  listener: { name?: string; address: string; port: number };
  /** The bootstrap's static cluster of ext-authz (gRPC Check). */
  extAuthz: { cluster: string; timeoutMs?: number };
  /** The authority's own virtual host (the token endpoints, no ext_authz): static clusters of the bootstrap. */
  authority?: { domains: string[]; httpCluster: string; grpcCluster?: string };
  /** The name of the RouteConfiguration (default: the listener's name). */
  routeConfigName?: string;
  /**
   * An HTTPS listener beside the HTTP one, with the same routes and filters. The certificate chain
   * and private key are paths on Envoy's host (PEM): Envoy reads them, the key never travels over
   * xDS.
   */
  tls?: {
    name?: string;
    address: string;
    port: number;
    certificateFile: string;
    privateKeyFile: string;
    /**
     * RFC 8705: ask TLS clients for a certificate (`required`: no handshake without one), verified
     * against the CA bundle `caFile` (a path on Envoy's host) or, without one, accepted unverified
     * (the handshake still proves the key is the client's). Envoy forwards it to the authority
     * (x-forwarded-client-cert, its own: a client's is dropped) and to ext-authz
     * (include_peer_certificate); an unverified one with CERTIFICATE_UNVERIFIED_HEADER on the
     * authority's host, so that tls_client_auth does not take it.
     */
    clientCertificates?: { required: boolean; caFile?: string };
  };
}

/** A route as the builder reads it: a valid route (RouteSpec; the store's Route is one). */
export type XdsRoute = RouteSpec;

export interface XdsResource {
  name: string;
  typeUrl: XdsTypeUrl;
  /** A hash of `value`: the same bytes have the same version on every replica. */
  version: string;
  /** The serialized message (google.protobuf.Any's value). */
  value: Uint8Array;
}

/** Every resource by type URL, then by name. */
export type XdsSnapshot = Map<XdsTypeUrl, Map<string, XdsResource>>;

export const EXT_AUTHZ_FILTER = 'envoy.filters.http.ext_authz';
const EXT_AUTHZ_PER_ROUTE = `${TYPE_URL_PREFIX}envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute`;
const ADS_SOURCE = { ads: {}, resource_api_version: 'V3' };

/** The Envoy cluster of a route (the same name as the API-key entity of the route, Otoroshi's `route_<id>`). */
export function clusterName(routeId: string): string {
  return `route_${routeId}`;
}

/** The route id of a resource name (`route_<id>`), or undefined for a fixed resource. */
export function routeIdOf(resourceName: string): string | undefined {
  return resourceName.startsWith('route_') ? resourceName.slice('route_'.length) : undefined;
}

export function versionOf(value: Uint8Array): string {
  return createHash('sha256').update(value).digest('base64url').slice(0, 22);
}

function resource(typeUrl: XdsTypeUrl, name: string, value: Uint8Array): XdsResource {
  return { name, typeUrl, version: versionOf(value), value };
}

/** The host part of a domain pattern: `foo.oto.tools:8080` and `foo.oto.tools:*` are `foo.oto.tools`. */
export function hostOf(domain: string): string {
  const lowered = domain.toLowerCase();
  if (lowered.startsWith('[')) return lowered.slice(0, lowered.indexOf(']') + 1) || lowered;
  const colon = lowered.lastIndexOf(':');
  return colon < 0 ? lowered : lowered.slice(0, colon);
}

/** The policy ext-authz reads from context_extensions (policySchema's fields). */
export function policyOf(route: XdsRoute): RoutePolicy {
  const { apikeys } = route;
  return {
    extractors: apikeys.extractors,
    authorizedEntities: apikeys.authorizedEntities,
    audiences: apikeys.audiences,
    requiredScopes: apikeys.requiredScopes,
    stripCredential: apikeys.stripCredential,
    clientIdHeader: apikeys.clientIdHeader,
    clientSecretHeader: apikeys.clientSecretHeader,
    quotas: apikeys.quotas,
    quotaFailure: apikeys.quotaFailure,
  };
}

/** `typed_per_filter_config` of a route entry: the policy, or ext_authz off. */
function extAuthzPerRoute(route: XdsRoute | undefined): object {
  if (!route?.apikeys.enabled) return { [EXT_AUTHZ_FILTER]: { '@type': EXT_AUTHZ_PER_ROUTE, disabled: true } };
  return {
    [EXT_AUTHZ_FILTER]: {
      '@type': EXT_AUTHZ_PER_ROUTE,
      check_settings: {
        context_extensions: { [ROUTE_EXTENSION]: route.id, [POLICY_EXTENSION]: encodeInlinePolicy(policyOf(route)) },
      },
    },
  };
}

/** One entry of a virtual host: where it sits (host, prefix) and its encoded envoy.config.route.v3.Route. */
interface RouteEntry {
  host: string;
  prefix: string;
  /** Fixed entries (the authority's, the 404) come after routes with the same prefix. */
  fixed: boolean;
  routeId: string;
  bytes: Uint8Array;
}

/** What one route yields, kept while its content is the same. */
interface BuiltRoute {
  key: string;
  route: XdsRoute;
  cluster: XdsResource;
  endpoints: XdsResource | undefined;
  entries: RouteEntry[];
}

const encodeRoute = (object: object) => encodeMessage('envoy.config.route.v3.Route', object);

function routeEntries(route: XdsRoute): RouteEntry[] {
  const cluster = clusterName(route.id);
  const action = { cluster, timeout: duration(route.backend.requestTimeoutMs) };
  const hosts = [...new Set(route.frontend.domains.map(hostOf))];
  const checked = encodeRoute({
    name: route.id,
    match: { prefix: route.frontend.pathPrefix },
    route: action,
    typed_per_filter_config: extAuthzPerRoute(route),
  });
  const entries: RouteEntry[] = [];
  for (const host of hosts) {
    entries.push({ host, prefix: route.frontend.pathPrefix, fixed: false, routeId: route.id, bytes: checked });
    for (const prefix of new Set(route.apikeys.publicPathPrefixes)) {
      if (prefix === route.frontend.pathPrefix && !route.apikeys.enabled) continue;
      const open = encodeRoute({ name: route.id, match: { prefix }, route: action, typed_per_filter_config: extAuthzPerRoute(undefined) });
      entries.push({ host, prefix, fixed: false, routeId: route.id, bytes: open });
    }
  }
  return entries;
}

function clusterOf(route: XdsRoute): { cluster: XdsResource; endpoints: XdsResource | undefined } {
  const name = clusterName(route.id);
  const { targets } = route.backend;
  const eds = targets.every((target) => isIP(target.hostname) !== 0);
  const lbEndpoints = targets.map((target) => ({
    endpoint: { address: { socket_address: { address: target.hostname, port_value: target.port } } },
    load_balancing_weight: { value: target.weight },
    ...(target.tls && !targets.every((each) => each.tls)
      ? { metadata: { filter_metadata: { 'envoy.transport_socket_match': { fields: { tls: { boolValue: true } } } } } }
      : {}),
  }));
  const assignment = { cluster_name: name, endpoints: [{ lb_endpoints: lbEndpoints }] };
  const tlsSocket = (sni: string | undefined) => ({
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': `${TYPE_URL_PREFIX}envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`,
      ...(sni ? { sni } : {}),
    },
  });
  const tlsTargets = targets.filter((target) => target.tls);
  const names = new Set(tlsTargets.map((target) => target.hostname).filter((hostname) => isIP(hostname) === 0));
  const sni = names.size === 1 ? [...names][0] : undefined;
  const cluster = {
    name,
    connect_timeout: duration(route.backend.connectTimeoutMs),
    lb_policy: 'ROUND_ROBIN',
    ...(eds
      ? { type: 'EDS', eds_cluster_config: { eds_config: ADS_SOURCE } }
      : { type: 'STRICT_DNS', dns_lookup_family: 'V4_ONLY', load_assignment: assignment }),
    ...(tlsTargets.length === targets.length ? { transport_socket: tlsSocket(sni) } : {}),
    ...(tlsTargets.length && tlsTargets.length < targets.length
      ? {
          transport_socket_matches: [
            { name: 'tls', match: { fields: { tls: { boolValue: true } } }, transport_socket: tlsSocket(sni) },
            {
              name: 'plaintext',
              match: {},
              transport_socket: {
                name: 'envoy.transport_sockets.raw_buffer',
                typed_config: { '@type': `${TYPE_URL_PREFIX}envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer` },
              },
            },
          ],
        }
      : {}),
  };
  return {
    cluster: resource(CLUSTER, name, encodeMessage('envoy.config.cluster.v3.Cluster', cluster)),
    endpoints: eds
      ? resource(CLUSTER_LOAD_ASSIGNMENT, name, encodeMessage('envoy.config.endpoint.v3.ClusterLoadAssignment', assignment))
      : undefined,
  };
}

/** Field numbers of the two messages written by hand here (read from the protos, not restated). */
function fieldIds() {
  const vhost = envoyType('envoy.config.route.v3.VirtualHost').fields;
  const config = envoyType('envoy.config.route.v3.RouteConfiguration').fields;
  return {
    vhostName: vhost.name.id,
    vhostDomains: vhost.domains.id,
    vhostRoutes: vhost.routes.id,
    configName: config.name.id,
    configVirtualHosts: config.virtual_hosts.id,
    configIgnorePort: config.ignore_port_in_host_matching.id,
  };
}

const LENGTH_DELIMITED = 2;
const DIGEST_BYTES = 32;
const VARINT = 0;

/** The resource names a build changed (upserted or removed), by type. */
export type XdsChanges = ReadonlyMap<XdsTypeUrl, ReadonlySet<string>>;

/** A route's parts as kept, with the last build that saw it. */
type KeptRoute = BuiltRoute & { epoch: number };

/** What one build changes. */
interface BuildPass {
  changed: string[];
  clusters: Set<string>;
  endpoints: Set<string>;
  dirtyHosts: Set<string>;
}

/** A virtual host as kept between builds: its entries in order and its encoding as a RouteConfiguration field. */
interface VirtualHost {
  /** `virtual_hosts` field of the RouteConfiguration: tag, length, VirtualHost bytes. */
  field: Uint8Array;
  /** SHA-256 of `field`. */
  digest: Buffer;
}

/** Route entries in the order Envoy tries them: longest prefix first, fixed ones after routes of the same prefix. */
function byMatchOrder(a: RouteEntry, b: RouteEntry): number {
  return (
    b.prefix.length - a.prefix.length ||
    Number(a.fixed) - Number(b.fixed) ||
    (a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : 0) ||
    (a.routeId < b.routeId ? -1 : a.routeId > b.routeId ? 1 : 0)
  );
}

function sameEntries(a: readonly RouteEntry[], b: readonly RouteEntry[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++)
    if (a[i].host !== b[i].host || a[i].prefix !== b[i].prefix || Buffer.compare(a[i].bytes, b[i].bytes) !== 0) return false;
  return true;
}

/** The index of `host` in the sorted `hosts`, or where it would go (code unit order, as Array.prototype.sort). */
function searchSorted(hosts: readonly string[], host: string): number {
  let low = 0;
  let high = hosts.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (hosts[middle] < host) low = middle + 1;
    else high = middle;
  }
  return low;
}

/**
 * Builds snapshots incrementally: what each route yields (its cluster, endpoints and route entries)
 * is kept while the route does not change, and so is each virtual host's encoding and hash. A
 * change re-encodes only the virtual hosts whose entries it changed; the RouteConfiguration is the
 * concatenation of the kept virtual host fields (a repeated field is its elements' encodings one
 * after the other), its version a hash of their hashes, redone only when a virtual host changed.
 * What stays proportional to the route count: one identity check per route given (and the copy of
 * the RouteConfiguration's bytes when its virtual hosts changed).
 */
export class XdsResourceBuilder {
  private readonly built = new Map<string, KeptRoute>();
  private epoch = 0;
  /** The routes with an entry on each host. */
  private readonly routesByHost = new Map<string, Set<string>>();
  private readonly fixedByHost = new Map<string, RouteEntry[]>();
  /** Hosts with at least one entry, sorted; and their kept encodings, in the same order. */
  private readonly hosts: string[] = [];
  private readonly vhosts: VirtualHost[] = [];
  private readonly clusters = new Map<string, XdsResource>();
  private readonly endpoints = new Map<string, XdsResource>();
  private routeConfig: XdsResource | undefined;
  private readonly listeners: XdsResource[];
  private readonly routeConfigName: string;
  private readonly fields = fieldIds();
  private readonly snapshot: XdsSnapshot;
  /** The routes whose resources the last build changed (new, modified, disabled or gone). */
  changed: string[] = [];
  /** The resource names the last build changed, by type (what a stream that held the last snapshot needs to look at). */
  changedNames: XdsChanges = new Map();

  constructor(private readonly placement: XdsPlacement) {
    const listenerName = placement.listener.name ?? 'ingress_http';
    this.routeConfigName = placement.routeConfigName ?? listenerName;
    const { listener, tls } = placement;
    const encodeListener = (name: string, address: { address: string; port: number }, tlsFiles?: XdsPlacement['tls']) =>
      resource(LISTENER, name, encodeMessage('envoy.config.listener.v3.Listener', this.listenerObject(name, address, tlsFiles)));
    this.listeners = [encodeListener(listenerName, listener)];
    if (tls) this.listeners.push(encodeListener(tls.name ?? 'ingress_https', tls, tls));
    for (const entry of this.fixedRouteEntries()) {
      const list = this.fixedByHost.get(entry.host);
      if (list) list.push(entry);
      else this.fixedByHost.set(entry.host, [entry]);
    }
    this.snapshot = new Map<XdsTypeUrl, Map<string, XdsResource>>([
      [LISTENER, new Map(this.listeners.map((each) => [each.name, each]))],
      [ROUTE_CONFIGURATION, new Map()],
      [CLUSTER, this.clusters],
      [CLUSTER_LOAD_ASSIGNMENT, this.endpoints],
    ]);
    const dirty = new Set(this.fixedByHost.keys());
    this.updateHosts(dirty);
    this.updateRouteConfiguration();
  }

  /**
   * The snapshot of the given routes (disabled ones are left out: their hosts answer 404). Routes are
   * values: a route object given again as it was is taken as unchanged (change a copy, not the object).
   * The snapshot is the builder's own state: the next build changes it in place.
   */
  build(routes: readonly XdsRoute[]): XdsSnapshot {
    const epoch = ++this.epoch;
    const pass = this.startPass();
    for (const route of routes) {
      if (!route.enabled) continue;
      const known = this.built.get(route.id);
      if (known?.epoch === epoch) continue; // the first of two routes with one id
      this.upsert(route, known, pass);
    }
    for (const [id, known] of this.built) if (known.epoch !== epoch) this.remove(id, known, pass);
    return this.finishPass(pass);
  }

  /**
   * The snapshot after a change of some routes: `upserted` as they now are (a disabled one is left
   * out), `removed` the ids of routes deleted. The cost follows the change, not the route count.
   */
  update(upserted: readonly XdsRoute[], removed: readonly string[]): XdsSnapshot {
    const pass = this.startPass();
    for (const id of removed) {
      const known = this.built.get(id);
      if (known) this.remove(id, known, pass);
    }
    for (const route of upserted) {
      const known = this.built.get(route.id);
      if (route.enabled) this.upsert(route, known, pass);
      else if (known) this.remove(route.id, known, pass);
    }
    return this.finishPass(pass);
  }

  private startPass(): BuildPass {
    return { changed: [], clusters: new Set(), endpoints: new Set(), dirtyHosts: new Set() };
  }

  private finishPass(pass: BuildPass): XdsSnapshot {
    this.changed = pass.changed;
    const changedNames = new Map<XdsTypeUrl, Set<string>>([
      [CLUSTER, pass.clusters],
      [CLUSTER_LOAD_ASSIGNMENT, pass.endpoints],
    ]);
    if (pass.dirtyHosts.size && this.updateHosts(pass.dirtyHosts) && this.updateRouteConfiguration())
      changedNames.set(ROUTE_CONFIGURATION, new Set([this.routeConfigName]));
    this.changedNames = changedNames;
    return this.snapshot;
  }

  private upsert(route: XdsRoute, known: KeptRoute | undefined, pass: BuildPass): void {
    const epoch = this.epoch;
    if (known?.route === route) {
      // The same object as last time (the route set keeps unchanged routes as they were): nothing to compare.
      known.epoch = epoch;
      return;
    }
    const key = JSON.stringify([route.frontend, route.backend, route.apikeys]);
    if (known?.key === key) {
      known.route = route;
      known.epoch = epoch;
      return;
    }
    pass.changed.push(route.id);
    const next: KeptRoute = { key, route, ...clusterOf(route), entries: routeEntries(route), epoch };
    if (known && sameEntries(known.entries, next.entries)) next.entries = known.entries;
    else {
      if (known) this.removeEntries(known, pass.dirtyHosts);
      this.addEntries(next, pass.dirtyHosts);
    }
    this.setResource(this.clusters, next.cluster, known?.cluster, pass.clusters);
    if (next.endpoints) this.setResource(this.endpoints, next.endpoints, known?.endpoints, pass.endpoints);
    else if (known?.endpoints) this.deleteResource(this.endpoints, known.endpoints.name, pass.endpoints);
    this.built.set(route.id, next);
  }

  private remove(id: string, known: KeptRoute, pass: BuildPass): void {
    this.built.delete(id);
    pass.changed.push(id);
    this.removeEntries(known, pass.dirtyHosts);
    this.deleteResource(this.clusters, known.cluster.name, pass.clusters);
    if (known.endpoints) this.deleteResource(this.endpoints, known.endpoints.name, pass.endpoints);
  }

  private setResource(resources: Map<string, XdsResource>, next: XdsResource, known: XdsResource | undefined, names: Set<string>): void {
    if (known?.name === next.name && known.version === next.version) return;
    resources.set(next.name, next);
    names.add(next.name);
  }

  private deleteResource(resources: Map<string, XdsResource>, name: string, names: Set<string>): void {
    if (resources.delete(name)) names.add(name);
  }

  private addEntries(built: BuiltRoute, dirty: Set<string>): void {
    for (const entry of built.entries) {
      const ids = this.routesByHost.get(entry.host);
      if (ids) ids.add(built.route.id);
      else this.routesByHost.set(entry.host, new Set([built.route.id]));
      dirty.add(entry.host);
    }
  }

  private removeEntries(built: BuiltRoute, dirty: Set<string>): void {
    for (const entry of built.entries) {
      const ids = this.routesByHost.get(entry.host);
      ids?.delete(built.route.id);
      if (ids?.size === 0) this.routesByHost.delete(entry.host);
      dirty.add(entry.host);
    }
  }

  /** Re-encodes the given hosts' virtual hosts (dropping those left with no entry); whether any changed. */
  private updateHosts(dirty: Set<string>): boolean {
    const { fields } = this;
    let moved = false;
    for (const host of dirty) {
      const entries: RouteEntry[] = [...(this.fixedByHost.get(host) ?? [])];
      for (const id of this.routesByHost.get(host) ?? [])
        for (const entry of this.built.get(id)?.entries ?? []) if (entry.host === host) entries.push(entry);
      const at = searchSorted(this.hosts, host);
      const present = this.hosts[at] === host;
      if (!entries.length) {
        if (present) {
          this.hosts.splice(at, 1);
          this.vhosts.splice(at, 1);
          moved = true;
        }
        continue;
      }
      entries.sort(byMatchOrder);
      const writer = Writer.create();
      writer.uint32((fields.configVirtualHosts << 3) | LENGTH_DELIMITED).fork();
      writer.uint32((fields.vhostName << 3) | LENGTH_DELIMITED).string(host);
      writer.uint32((fields.vhostDomains << 3) | LENGTH_DELIMITED).string(host);
      for (const entry of entries) writer.uint32((fields.vhostRoutes << 3) | LENGTH_DELIMITED).bytes(entry.bytes);
      writer.ldelim();
      const field = writer.finish();
      const vhost = { field, digest: createHash('sha256').update(field).digest() };
      if (present) {
        if (Buffer.compare(this.vhosts[at].field, field) === 0) continue;
        this.vhosts[at] = vhost;
      } else {
        this.hosts.splice(at, 0, host);
        this.vhosts.splice(at, 0, vhost);
      }
      moved = true;
    }
    return moved;
  }

  /**
   * The RouteConfiguration from the kept virtual hosts, in host order; its version the hash of
   * their hashes (equal bytes, equal version, on every replica). Whether it changed.
   */
  private updateRouteConfiguration(): boolean {
    const { fields, vhosts } = this;
    const head = Writer.create();
    head.uint32((fields.configName << 3) | LENGTH_DELIMITED).string(this.routeConfigName);
    const first = head.finish();
    const tail = Writer.create();
    tail.uint32((fields.configIgnorePort << 3) | VARINT).bool(true);
    const last = tail.finish();
    let size = first.length + last.length;
    for (const vhost of vhosts) size += vhost.field.length;
    // Copied by hand: Buffer.concat of 10,000 parts takes several times as long.
    const value = Buffer.allocUnsafe(size);
    const digests = Buffer.allocUnsafe(vhosts.length * DIGEST_BYTES);
    value.set(first, 0);
    let offset = first.length;
    for (let i = 0; i < vhosts.length; i++) {
      value.set(vhosts[i].field, offset);
      offset += vhosts[i].field.length;
      digests.set(vhosts[i].digest, i * DIGEST_BYTES);
    }
    value.set(last, offset);
    const version = createHash('sha256').update(first).update(digests).update(last).digest('base64url').slice(0, 22);
    if (this.routeConfig?.version === version) return false;
    this.routeConfig = { name: this.routeConfigName, typeUrl: ROUTE_CONFIGURATION, version, value };
    this.snapshot.set(ROUTE_CONFIGURATION, new Map([[this.routeConfigName, this.routeConfig]]));
    return true;
  }

  /** The authority's host (no ext_authz: a client asking for its first token has none) and the 404 for every other host. */
  private fixedRouteEntries(): RouteEntry[] {
    const off = extAuthzPerRoute(undefined);
    const entries: RouteEntry[] = [];
    const authority = this.placement.authority;
    if (authority) {
      const grpc = authority.grpcCluster;
      const routes = [
        ...(grpc
          ? ['/token_authority.v1.TokenAuthority/', '/grpc.reflection.', '/grpc.health.v1.Health/'].map((prefix) => ({
              prefix,
              bytes: encodeRoute({
                match: { prefix, grpc: {} },
                route: { cluster: grpc, timeout: duration(10_000) },
                typed_per_filter_config: off,
              }),
            }))
          : []),
        // RFC 8705: a certificate Envoy took without verifying it (no client CA: ACCEPT_UNTRUSTED) is
        // said so to the authority, whose tls_client_auth then refuses it (anyone can write a
        // certificate with a given subject). A client sending the header itself only loses tls_client_auth.
        // Not with a CA: Envoy then verified every certificate it took, and `validated` reads false on
        // a resumed TLS session (route_components.proto), which would refuse good clients.
        ...(this.placement.tls?.clientCertificates && !this.placement.tls.clientCertificates.caFile
          ? [
              {
                prefix: '/',
                bytes: encodeRoute({
                  match: { prefix: '/', tls_context: { presented: { value: true }, validated: { value: false } } },
                  route: { cluster: authority.httpCluster },
                  request_headers_to_add: [
                    { header: { key: CERTIFICATE_UNVERIFIED_HEADER, value: 'true' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
                  ],
                  typed_per_filter_config: off,
                }),
              },
            ]
          : []),
        {
          prefix: '/',
          bytes: encodeRoute({ match: { prefix: '/' }, route: { cluster: authority.httpCluster }, typed_per_filter_config: off }),
        },
      ];
      for (const domain of new Set(authority.domains.map(hostOf)))
        for (const { prefix, bytes } of routes) entries.push({ host: domain, prefix, fixed: true, routeId: '', bytes });
    }
    const notFound = encodeRoute({
      name: 'no_route',
      match: { prefix: '/' },
      direct_response: {
        status: 404,
        body: { inline_string: '{"error":"not_found","error_description":"no route for this host and path"}' },
      },
      typed_per_filter_config: off,
    });
    entries.push({ host: '*', prefix: '/', fixed: true, routeId: '', bytes: notFound });
    return entries;
  }

  private listenerObject(name: string, address: { address: string; port: number }, tls?: XdsPlacement['tls']): object {
    const { placement } = this;
    const timeoutMs = placement.extAuthz.timeoutMs ?? 250;
    const clientCertificates = tls?.clientCertificates !== undefined;
    return {
      name,
      address: { socket_address: { address: address.address, port_value: address.port } },
      filter_chains: [
        {
          ...(tls ? { transport_socket: downstreamTls(tls) } : {}),
          filters: [
            {
              name: 'envoy.filters.network.http_connection_manager',
              typed_config: {
                '@type': `${TYPE_URL_PREFIX}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`,
                stat_prefix: name,
                codec_type: 'AUTO',
                // As envoy/envoy.yaml: an edge proxy, the client's address is the TCP peer (issue 22).
                use_remote_address: { value: true },
                xff_num_trusted_hops: 0,
                // RFC 8705: x-forwarded-client-cert is Envoy's own, never the client's: dropped from every
                // request, and where clients may present a certificate, set from it (URL-encoded PEM in Cert).
                ...(clientCertificates
                  ? {
                      forward_client_cert_details: 'SANITIZE_SET',
                      set_current_client_cert_details: { cert: true, subject: { value: true }, uri: true, dns: true },
                    }
                  : { forward_client_cert_details: 'SANITIZE' }),
                max_request_headers_kb: { value: 96 },
                access_log: [
                  {
                    name: 'envoy.access_loggers.stdout',
                    typed_config: { '@type': `${TYPE_URL_PREFIX}envoy.extensions.access_loggers.stream.v3.StdoutAccessLog` },
                  },
                ],
                rds: { config_source: ADS_SOURCE, route_config_name: this.routeConfigName },
                http_filters: [
                  {
                    name: EXT_AUTHZ_FILTER,
                    typed_config: {
                      '@type': `${TYPE_URL_PREFIX}envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`,
                      grpc_service: { envoy_grpc: { cluster_name: placement.extAuthz.cluster }, timeout: duration(timeoutMs) },
                      transport_api_version: 'V3',
                      // Fail closed: ext-authz down or slow is a denial, never an open door.
                      failure_mode_allow: false,
                      // RFC 8705: the client certificate in attributes.source.certificate, for cnf.x5t#S256.
                      include_peer_certificate: clientCertificates,
                    },
                  },
                  {
                    name: 'envoy.filters.http.router',
                    typed_config: { '@type': `${TYPE_URL_PREFIX}envoy.extensions.filters.http.router.v3.Router` },
                  },
                ],
              },
            },
          ],
        },
      ],
    };
  }
}

/** TLS at the edge: the certificate and key files (PEM, on Envoy's host), HTTP/2 or HTTP/1.1 by ALPN. */
function downstreamTls(tls: NonNullable<XdsPlacement['tls']>): object {
  const clients = tls.clientCertificates;
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': `${TYPE_URL_PREFIX}envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext`,
      common_tls_context: {
        tls_certificates: [{ certificate_chain: { filename: tls.certificateFile }, private_key: { filename: tls.privateKeyFile } }],
        alpn_protocols: ['h2', 'http/1.1'],
        ...(clients && {
          validation_context: clients.caFile
            ? { trusted_ca: { filename: clients.caFile } }
            : // self_signed_tls_client_auth and bound tokens need no chain: Envoy takes any certificate.
              { trust_chain_verification: 'ACCEPT_UNTRUSTED' },
        }),
      },
      ...(clients && { require_client_certificate: { value: clients.required } }),
    },
  };
}

/** A snapshot as plain objects (decoded), for tests and the admin's view: type URL → name → message. */
export function decodeSnapshot(snapshot: XdsSnapshot): Record<string, Record<string, Record<string, unknown>>> {
  const out: Record<string, Record<string, Record<string, unknown>>> = {};
  for (const [typeUrl, resources] of snapshot) {
    const type = envoyType(typeUrl.slice(TYPE_URL_PREFIX.length));
    out[typeUrl] = {};
    for (const [name, { value }] of resources)
      out[typeUrl][name] = type.toObject(type.decode(value), { longs: Number, enums: String, json: true }) as Record<string, unknown>;
  }
  return out;
}
