import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { parseDocument, type YAMLMap, type YAMLSeq } from 'yaml';
import { type RouteInput, type RouteSpec, validateRoute } from '../../libs/core/routes';
import { renderEnvoyConfig } from '../../libs/envoy/render-config';
import { ADMIN_TOKEN } from './authority';
import { ENVOY_DIR } from './envoy';

/*
 * What the tests of the xDS control plane share (test/xds.test.ts, test/xds-replicas.test.ts,
 * test/xds-tls.test.ts): a route from its input, a poll with a bound, backends that say their
 * name, envoy/envoy-xds.yaml rendered for 127.0.0.1, and what an Envoy holds (its config_dump).
 */

/** A valid route (what the store holds) from an input, or a failure naming the issues. */
export function route(input: RouteInput): RouteSpec {
  const validated = validateRoute(input);
  if (!validated.ok) throw new Error(JSON.stringify(validated.issues));
  return validated.route;
}

/** Polls `probe` every 20 ms until it is true; the time it took, or a failure after `timeoutMs`. */
export async function within(timeoutMs: number, probe: () => Promise<boolean>, what: string): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await probe().catch(() => false)) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 20));
  }
}

export interface Backend {
  port: number;
  close(): Promise<void>;
}

/** A backend that says its name (and echoes the headers it got). */
export function namedBackend(name: string): Promise<Backend> {
  const server = createServer((request, response) => {
    request.resume();
    const body = JSON.stringify({ backend: name, headers: request.headers });
    response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    response.end(body);
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as AddressInfo).port,
        close: () => new Promise((done) => server.close(() => done())),
      }),
    ),
  );
}

export interface XdsBootstrapPorts {
  admin: number;
  /**
   * The control plane's ADS port, or several in failover order: each its own priority (0, 1, ...)
   * of the xds cluster, TCP health-checked every 250 ms, so Envoy streams from the first one up
   * and moves to the next when it is gone.
   */
  xds: number | number[];
  authorityHttp: number;
  authorityGrpc: number;
  extAuthzGrpc: number;
}

/** envoy/envoy-xds.yaml for 127.0.0.1 (`edit` changes its text first, e.g. the api_type). */
export function xdsBootstrap(ports: XdsBootstrapPorts, edit = (text: string) => text): string {
  const local = (port: number) => ({ address: '127.0.0.1', port });
  const xds = [ports.xds].flat();
  const rendered = renderEnvoyConfig(edit(readFileSync(path.join(ENVOY_DIR, 'envoy-xds.yaml'), 'utf8')), {
    admin: local(ports.admin),
    clusters: {
      xds: local(xds[0]),
      token_authority: local(ports.authorityHttp),
      token_authority_grpc: local(ports.authorityGrpc),
      ext_authz: local(ports.extAuthzGrpc),
    },
    xdsToken: ADMIN_TOKEN,
  });
  if (xds.length === 1) return rendered;
  const document = parseDocument(rendered);
  const clusters = document.getIn(['static_resources', 'clusters']) as YAMLSeq<YAMLMap>;
  const cluster = clusters.items.find((each) => each.get('name') === 'xds') as YAMLMap;
  cluster.setIn(
    ['load_assignment', 'endpoints'],
    document.createNode(
      xds.map((port, priority) => ({
        priority,
        lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: port } } } }],
      })),
    ),
  );
  cluster.set(
    'health_checks',
    document.createNode([{ timeout: '0.25s', interval: '0.25s', unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]),
  );
  return document.toString();
}

/**
 * What an Envoy holds of its dynamic config (the admin's /config_dump), by type and name: each
 * listener's, route configuration's and cluster's version, and each ClusterLoadAssignment's
 * content (the dump gives no version for endpoints).
 */
export async function heldVersions(adminUrl: string): Promise<Record<string, Record<string, string>>> {
  const dump = (await (await fetch(`${adminUrl}/config_dump?include_eds`)).json()) as { configs: Record<string, unknown>[] };
  const out: Record<string, Record<string, string>> = { listeners: {}, routes: {}, clusters: {}, endpoints: {} };
  const take = (kind: string, items: unknown, nameOf: (item: any) => string | undefined, read = (item: any) => item.version_info) => {
    for (const item of (items as any[] | undefined) ?? []) {
      const name = nameOf(item);
      if (name !== undefined) out[kind][name] = String(read(item));
    }
  };
  for (const config of dump.configs) {
    const type = String(config['@type']);
    if (type.endsWith('ListenersConfigDump'))
      take(
        'listeners',
        config.dynamic_listeners,
        (item) => (item.active_state ? item.name : undefined),
        (item) => item.active_state.version_info,
      );
    else if (type.endsWith('RoutesConfigDump')) take('routes', config.dynamic_route_configs, (item) => item.route_config?.name);
    else if (type.endsWith('ClustersConfigDump')) take('clusters', config.dynamic_active_clusters, (item) => item.cluster?.name);
    else if (type.endsWith('EndpointsConfigDump'))
      take(
        'endpoints',
        config.dynamic_endpoint_configs,
        (item) => item.endpoint_config?.cluster_name,
        (item) => JSON.stringify(item.endpoint_config.endpoints),
      );
  }
  return out;
}

/** When Envoy last took each dynamic listener, route configuration and cluster (config_dump's last_updated). */
export async function lastUpdated(adminUrl: string): Promise<Record<string, string>> {
  const dump = (await (await fetch(`${adminUrl}/config_dump?include_eds`)).json()) as { configs: Record<string, any>[] };
  const out: Record<string, string> = {};
  for (const config of dump.configs) {
    for (const item of config.dynamic_listeners ?? []) out[`listener/${item.name}`] = item.active_state?.last_updated;
    for (const item of config.dynamic_route_configs ?? []) out[`route/${item.route_config?.name}`] = item.last_updated;
    for (const item of config.dynamic_active_clusters ?? []) out[`cluster/${item.cluster?.name}`] = item.last_updated;
  }
  return out;
}
