import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadSync } from '@grpc/proto-loader';
import { parse } from 'yaml';
import { ENVOY_PROTO_INCLUDE_DIRS, EXT_AUTHZ_PROTO } from '../libs/envoy/envoy-protos';

const ROOT = path.resolve(__dirname, '..', '..');
const GRPC_YAML = readFileSync(path.join(ROOT, 'envoy', 'envoy.yaml'), 'utf8');
const HTTP_YAML = readFileSync(path.join(ROOT, 'envoy', 'envoy-http.yaml'), 'utf8');
const CLUSTER_YAML = readFileSync(path.join(ROOT, 'envoy', 'envoy-cluster.yaml'), 'utf8');

/** Parsed YAML: walked by the paths the test spells out, so loosely typed on purpose. */
type Yaml = any;

const _HCM = 'static_resources.listeners[0].filter_chains[0].filters[0].typed_config';
const hcm = (config: Yaml): Yaml => config.static_resources.listeners[0].filter_chains[0].filters[0].typed_config;
const virtualHost = (config: Yaml, domain: string): Yaml =>
  hcm(config).route_config.virtual_hosts.find((host: Yaml) => host.domains.includes(domain));
const httpFilter = (config: Yaml, name: string): Yaml => hcm(config).http_filters.find((filter: Yaml) => filter.name === name);
const cluster = (config: Yaml, name: string): Yaml => config.static_resources.clusters.find((entry: Yaml) => entry.name === name);
const endpointOf = (entry: Yaml): Yaml => entry.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address;

describe('the routing and authorization contract of envoy.yaml', () => {
  const config = parse(GRPC_YAML);
  const extAuthz = httpFilter(config, 'envoy.filters.http.ext_authz');

  it('serves the admin API on 9901 and the listener on 8080', () => {
    assert.equal(config.admin.address.socket_address.port_value, 9901);
    assert.equal(config.static_resources.listeners[0].address.socket_address.port_value, 8080);
  });

  it('runs ext_authz first and the router last', () => {
    const names = hcm(config).http_filters.map((filter: Yaml) => filter.name);
    assert.deepEqual(names, ['envoy.filters.http.ext_authz', 'envoy.filters.http.router']);
  });

  it('asks ext-authz over gRPC v3, fails closed, within 250 ms', () => {
    const settings = extAuthz.typed_config;
    assert.equal(settings.grpc_service.envoy_grpc.cluster_name, 'ext_authz');
    assert.equal(settings.grpc_service.timeout, '0.25s');
    assert.equal(settings.transport_api_version, 'V3');
    assert.equal(settings.failure_mode_allow, false);
  });

  it('does not check requests to oauth.oto.tools (the token endpoints)', () => {
    const oauth = virtualHost(config, 'oauth.oto.tools');
    assert.ok(oauth.domains.includes('oauth.oto.tools:*'), 'Host with a port matches too');
    assert.equal(oauth.routes.at(-1).route.cluster, 'token_authority', 'everything else goes to the REST face');
    assert.deepEqual(
      oauth.routes.filter((route: Yaml) => route.match.grpc).map((route: Yaml) => [route.match.prefix, route.route.cluster]),
      [
        ['/token_authority.v1.TokenAuthority/', 'token_authority_grpc'],
        ['/grpc.reflection.', 'token_authority_grpc'],
        ['/grpc.health.v1.Health/', 'token_authority_grpc'],
      ],
      'gRPC clients reach the gRPC face',
    );
    assert.equal(oauth.typed_per_filter_config['envoy.filters.http.ext_authz'].disabled, true);
  });

  it('names the "foo" policy on foo.oto.tools (but /public/) and "bar" on bar.oto.tools', () => {
    const foo = virtualHost(config, 'foo.oto.tools');
    assert.ok(foo.domains.includes('foo.oto.tools:*'), 'Host with a port matches too');
    const [open, checked] = foo.routes;
    assert.equal(open.match.prefix, '/public/');
    assert.equal(open.typed_per_filter_config['envoy.filters.http.ext_authz'].disabled, true, 'the one open route');
    assert.equal(checked.route.cluster, 'echo');
    assert.deepEqual(checked.typed_per_filter_config['envoy.filters.http.ext_authz'].check_settings.context_extensions, { route: 'foo' });
    const bar = virtualHost(config, 'bar.oto.tools');
    assert.deepEqual(bar.routes[0].typed_per_filter_config['envoy.filters.http.ext_authz'].check_settings.context_extensions, {
      route: 'bar',
    });
    assert.equal(foo.typed_per_filter_config, undefined, 'ext_authz stays enabled on the foo host');
  });

  it('reaches ext-authz over HTTP/2 with gRPC health checks', () => {
    const authz = cluster(config, 'ext_authz');
    assert.deepEqual(endpointOf(authz), { address: 'ext-authz', port_value: 9191 });
    const options = authz.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'];
    assert.deepEqual(options.explicit_http_config, { http2_protocol_options: {} });
    assert.deepEqual(authz.health_checks[0].grpc_health_check, {});
  });

  it('defines every cluster it routes to, at the compose service addresses', () => {
    const routed = hcm(config).route_config.virtual_hosts.flatMap((host: Yaml) => host.routes.map((route: Yaml) => route.route.cluster));
    for (const name of [...routed, extAuthz.typed_config.grpc_service.envoy_grpc.cluster_name])
      assert.ok(cluster(config, name), `cluster ${name} is defined`);
    assert.deepEqual(endpointOf(cluster(config, 'token_authority')), { address: 'token-authority', port_value: 8080 });
    assert.deepEqual(endpointOf(cluster(config, 'token_authority_grpc')), { address: 'token-authority', port_value: 50051 });
    assert.deepEqual(endpointOf(cluster(config, 'echo')), { address: 'echo', port_value: 8081 });
  });
});

describe('the authorization contract of envoy-http.yaml', () => {
  const config = parse(HTTP_YAML);
  const settings = httpFilter(config, 'envoy.filters.http.ext_authz').typed_config;
  const exactNames = (matcher: Yaml): string[] => matcher.patterns.map((pattern: Yaml) => pattern.exact);

  it('asks ext-authz over HTTP with the "foo" policy as path prefix, failing closed', () => {
    assert.equal(settings.grpc_service, undefined);
    assert.deepEqual(settings.http_service.server_uri, { uri: 'http://ext-authz:9192', cluster: 'ext_authz_http', timeout: '0.25s' });
    assert.equal(settings.http_service.path_prefix, '/authz/foo');
    assert.equal(settings.http_service.authorization_request, undefined, 'no client-influenced policy header');
    assert.equal(settings.failure_mode_allow, false);
  });

  it("passes the credential, a DPoP proof and Envoy's X-Forwarded-Proto, request id and Envoy's X-Forwarded-For, and takes back identity, remaining-calls and DPoP-Nonce headers", () => {
    assert.deepEqual(exactNames(settings.allowed_headers), [
      'authorization',
      'dpop',
      'x-forwarded-proto',
      'x-request-id',
      'x-forwarded-for',
      'x-forwarded-client-cert',
    ]);
    assert.deepEqual(exactNames(settings.http_service.authorization_response.allowed_client_headers_on_success), [
      'otoroshi-daily-calls-remaining',
      'otoroshi-monthly-calls-remaining',
      'dpop-nonce',
    ]);
    assert.deepEqual(exactNames(settings.http_service.authorization_response.allowed_upstream_headers), [
      'x-client-id',
      'x-client-name',
      'x-client-scopes',
      'authorization',
    ]);
  });

  it('still skips oauth.oto.tools, and health-checks ext-authz with GET /health', () => {
    assert.equal(virtualHost(config, 'oauth.oto.tools').typed_per_filter_config['envoy.filters.http.ext_authz'].disabled, true);
    const authz = cluster(config, 'ext_authz_http');
    assert.deepEqual(endpointOf(authz), { address: 'ext-authz', port_value: 9192 });
    assert.equal(authz.health_checks[0].http_health_check.path, '/health');
  });
});

describe('envoy-cluster.yaml (compose profile `cluster`): envoy.yaml in front of two authority replicas', () => {
  const config = parse(CLUSTER_YAML);
  const single = parse(GRPC_YAML);
  const endpoints = (entry: Yaml) =>
    entry.load_assignment.endpoints[0].lb_endpoints.map((item: Yaml) => item.endpoint.address.socket_address);

  it('keeps the routes and filters of envoy.yaml', () => {
    assert.deepEqual(hcm(config), hcm(single));
    assert.deepEqual(config.admin, single.admin);
  });

  it('balances both faces over the two replicas, health-checked (a replica without its database answers /health 503)', () => {
    const rest = cluster(config, 'token_authority');
    assert.equal(rest.lb_policy, 'ROUND_ROBIN');
    assert.deepEqual(endpoints(rest), [
      { address: 'authority-a', port_value: 8080 },
      { address: 'authority-b', port_value: 8080 },
    ]);
    assert.equal(rest.health_checks[0].http_health_check.path, '/health');
    const grpc = cluster(config, 'token_authority_grpc');
    assert.deepEqual(endpoints(grpc), [
      { address: 'authority-a', port_value: 50051 },
      { address: 'authority-b', port_value: 50051 },
    ]);
    assert.deepEqual(grpc.health_checks[0].grpc_health_check, {});
  });

  it("asks the cluster's ext-authz and sends traffic to the shared echo backend", () => {
    assert.deepEqual(endpointOf(cluster(config, 'ext_authz')), { address: 'cluster-ext-authz', port_value: 9191 });
    assert.deepEqual(endpointOf(cluster(config, 'echo')), { address: 'echo', port_value: 8081 });
  });
});

describe('every envoy/*.yaml is the edge: it believes no client-sent X-Forwarded-* (issue 22)', () => {
  for (const [name, text] of [
    ['envoy.yaml', GRPC_YAML],
    ['envoy-http.yaml', HTTP_YAML],
    ['envoy-cluster.yaml', CLUSTER_YAML],
  ]) {
    it(`${name}: use_remote_address with xff_num_trusted_hops 0, so the last X-Forwarded-For entry is the real peer`, () => {
      const manager = hcm(parse(text));
      assert.equal(manager.use_remote_address, true);
      assert.equal(manager.xff_num_trusted_hops, 0);
      assert.equal(manager.original_ip_detection_extensions, undefined);
    });
    it(`${name}: x-forwarded-client-cert is Envoy's own (SANITIZE_SET, with the certificate), and gRPC ext_authz gets the peer certificate`, () => {
      const config = parse(text);
      const manager = hcm(config);
      assert.equal(manager.forward_client_cert_details, 'SANITIZE_SET');
      assert.equal(manager.set_current_client_cert_details.cert, true);
      const authz = httpFilter(config, 'envoy.filters.http.ext_authz').typed_config;
      if (authz.grpc_service) assert.equal(authz.include_peer_certificate, true);
    });
  }
});

describe("Envoy's ext_authz service protos", () => {
  it('load with @grpc/proto-loader from the exported include dirs', () => {
    const definition = loadSync(EXT_AUTHZ_PROTO, { includeDirs: [...ENVOY_PROTO_INCLUDE_DIRS], keepCase: true });
    const service = definition['envoy.service.auth.v3.Authorization'] as Record<string, { path: string }>;
    assert.equal(service.Check.path, '/envoy.service.auth.v3.Authorization/Check');
    assert.ok(definition['envoy.service.auth.v3.CheckResponse'], 'CheckResponse is defined');
  });
});
