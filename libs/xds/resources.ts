import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { Writer } from 'protobufjs';
import type { RoutePolicy } from '../authz/config';
import { encodeInlinePolicy, POLICY_EXTENSION, ROUTE_EXTENSION } from '../authz/route-policy';
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
 *   its routes by RDS over ADS;
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
 * Pure: routes in, bytes out. What a route yields is kept by the route's content, so a change
 * costs the changed routes' encoding plus the concatenation of the RouteConfiguration.
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
const VARINT = 0;

/** Builds snapshots, keeping what each route yielded while it does not change. */
export class XdsResourceBuilder {
  private readonly built = new Map<string, BuiltRoute>();
  private readonly fixedEntries: RouteEntry[];
  private readonly listener: XdsResource;
  private readonly routeConfigName: string;
  private readonly fields = fieldIds();
  /** The routes whose resources the last build changed (new, modified, disabled or gone). */
  changed: string[] = [];

  constructor(private readonly placement: XdsPlacement) {
    const listenerName = placement.listener.name ?? 'ingress_http';
    this.routeConfigName = placement.routeConfigName ?? listenerName;
    this.listener = resource(LISTENER, listenerName, encodeMessage('envoy.config.listener.v3.Listener', this.listenerObject(listenerName)));
    this.fixedEntries = this.fixedRouteEntries();
  }

  /**
   * A snapshot of the given routes (disabled ones are left out: their hosts answer 404). Routes are
   * values: a route object given again as it was is taken as unchanged (change a copy, not the object).
   */
  build(routes: readonly XdsRoute[]): XdsSnapshot {
    const seen = new Set<string>();
    const clusters = new Map<string, XdsResource>();
    const endpoints = new Map<string, XdsResource>();
    const entries: RouteEntry[] = [];
    const changed: string[] = [];
    for (const route of routes) {
      if (!route.enabled || seen.has(route.id)) continue;
      seen.add(route.id);
      const known = this.built.get(route.id);
      const built = this.routeParts(route);
      if (built !== known) changed.push(route.id);
      clusters.set(built.cluster.name, built.cluster);
      if (built.endpoints) endpoints.set(built.endpoints.name, built.endpoints);
      for (const entry of built.entries) entries.push(entry);
    }
    for (const id of this.built.keys())
      if (!seen.has(id)) {
        this.built.delete(id);
        changed.push(id);
      }
    this.changed = changed;
    const routeConfig = resource(ROUTE_CONFIGURATION, this.routeConfigName, this.routeConfiguration([...entries, ...this.fixedEntries]));
    return new Map<XdsTypeUrl, Map<string, XdsResource>>([
      [LISTENER, new Map([[this.listener.name, this.listener]])],
      [ROUTE_CONFIGURATION, new Map([[routeConfig.name, routeConfig]])],
      [CLUSTER, clusters],
      [CLUSTER_LOAD_ASSIGNMENT, endpoints],
    ]);
  }

  private routeParts(route: XdsRoute): BuiltRoute {
    const known = this.built.get(route.id);
    // The same object as last time (the route set keeps unchanged routes as they were): nothing to compare.
    if (known?.route === route) return known;
    const key = JSON.stringify([route.frontend, route.backend, route.apikeys]);
    if (known?.key === key) {
      known.route = route;
      return known;
    }
    const built: BuiltRoute = { key, route, ...clusterOf(route), entries: routeEntries(route) };
    this.built.set(route.id, built);
    return built;
  }

  /** RouteConfiguration bytes: virtual hosts by host name, entries longest prefix first (fixed ones after routes). */
  private routeConfiguration(entries: RouteEntry[]): Uint8Array {
    const byHost = new Map<string, RouteEntry[]>();
    for (const entry of entries) {
      const list = byHost.get(entry.host);
      if (list) list.push(entry);
      else byHost.set(entry.host, [entry]);
    }
    const { fields } = this;
    const writer = Writer.create();
    writer.uint32((fields.configName << 3) | LENGTH_DELIMITED).string(this.routeConfigName);
    for (const host of [...byHost.keys()].sort()) {
      const list = (byHost.get(host) as RouteEntry[]).sort(
        (a, b) =>
          b.prefix.length - a.prefix.length ||
          Number(a.fixed) - Number(b.fixed) ||
          (a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : 0) ||
          (a.routeId < b.routeId ? -1 : a.routeId > b.routeId ? 1 : 0),
      );
      writer.uint32((fields.configVirtualHosts << 3) | LENGTH_DELIMITED).fork();
      writer.uint32((fields.vhostName << 3) | LENGTH_DELIMITED).string(host);
      writer.uint32((fields.vhostDomains << 3) | LENGTH_DELIMITED).string(host);
      for (const entry of list) writer.uint32((fields.vhostRoutes << 3) | LENGTH_DELIMITED).bytes(entry.bytes);
      writer.ldelim();
    }
    writer.uint32((fields.configIgnorePort << 3) | VARINT).bool(true);
    return writer.finish();
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

  private listenerObject(name: string): object {
    const { placement } = this;
    const timeoutMs = placement.extAuthz.timeoutMs ?? 250;
    return {
      name,
      address: { socket_address: { address: placement.listener.address, port_value: placement.listener.port } },
      filter_chains: [
        {
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
                      include_peer_certificate: false,
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
