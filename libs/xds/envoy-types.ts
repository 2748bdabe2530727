import { existsSync } from 'node:fs';
import path from 'node:path';
import { Root, type Type } from 'protobufjs';
import { ENVOY_PROTO_INCLUDE_DIRS } from '../envoy/envoy-protos';

/** The protos of what the control plane sends (envoy/config/*, the filters it configures) and of ADS itself. */
const XDS_PROTOS = [
  'envoy/service/discovery/v3/ads.proto',
  'envoy/config/listener/v3/listener.proto',
  'envoy/config/route/v3/route.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'envoy/config/endpoint/v3/endpoint.proto',
  'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
  'envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto',
  'envoy/extensions/filters/http/router/v3/router.proto',
  'envoy/extensions/upstreams/http/v3/http_protocol_options.proto',
  'envoy/extensions/access_loggers/stream/v3/stream.proto',
  'envoy/extensions/transport_sockets/tls/v3/tls.proto',
  'envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto',
];

export const TYPE_URL_PREFIX = 'type.googleapis.com/';

/** The resource types served over ADS, by their type URL. */
export const LISTENER = `${TYPE_URL_PREFIX}envoy.config.listener.v3.Listener`;
export const ROUTE_CONFIGURATION = `${TYPE_URL_PREFIX}envoy.config.route.v3.RouteConfiguration`;
export const CLUSTER = `${TYPE_URL_PREFIX}envoy.config.cluster.v3.Cluster`;
export const CLUSTER_LOAD_ASSIGNMENT = `${TYPE_URL_PREFIX}envoy.config.endpoint.v3.ClusterLoadAssignment`;
export type XdsTypeUrl = typeof LISTENER | typeof ROUTE_CONFIGURATION | typeof CLUSTER | typeof CLUSTER_LOAD_ASSIGNMENT;
/** Make before break: clusters (and their endpoints) exist before a listener or route names them. */
export const XDS_TYPES: readonly XdsTypeUrl[] = [CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION];

let root: Root | undefined;

/**
 * Envoy's protos as shipped in @grpc/grpc-js-xds, loaded once by protobufjs (field names as in the
 * .proto, snake_case). `fromObject` takes google.protobuf.Any as `{ '@type': typeUrl, ...fields }`.
 */
export function envoyRoot(): Root {
  if (root) return root;
  const loaded = new Root();
  loaded.resolvePath = (_origin, target) => {
    for (const dir of ENVOY_PROTO_INCLUDE_DIRS) {
      const file = path.join(dir, target);
      if (existsSync(file)) return file;
    }
    return target;
  };
  loaded.loadSync(XDS_PROTOS, { keepCase: true });
  loaded.resolveAll();
  root = loaded;
  return loaded;
}

export function envoyType(name: string): Type {
  return envoyRoot().lookupType(name);
}

/** The message encoded from its plain-object form (checked by protobufjs's fromObject: unknown enum names throw). */
export function encodeMessage(typeName: string, object: object): Uint8Array {
  const type = envoyType(typeName);
  return type.encode(type.fromObject(object)).finish();
}

/** Milliseconds as google.protobuf.Duration. */
export function duration(ms: number): { seconds: number; nanos: number } {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
}
