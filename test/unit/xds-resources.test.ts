import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Authorizer } from '../../libs/authz/authorizer';
import { InlinePolicies, POLICY_EXTENSION, ROUTE_EXTENSION } from '../../libs/authz/route-policy';
import { hashSecret } from '../../libs/core/crypto/secret-hash';
import { validateRoute, type RouteInput, type RouteSpec } from '../../libs/core/routes';
import { CLUSTER, CLUSTER_LOAD_ASSIGNMENT, envoyType, LISTENER, ROUTE_CONFIGURATION } from '../../libs/xds/envoy-types';
import { xdsPlacement, xdsSettingsSchema } from '../../libs/xds/config';
import { decodeSnapshot, policyOf, XdsResourceBuilder, type XdsPlacement } from '../../libs/xds/resources';
import { apiKey, authzConfig, replicaWith, testKeyPair } from './support/fixtures';

/* Stored routes to Envoy resources (libs/xds/resources.ts), and the policy's way back in ext-authz (libs/authz/route-policy.ts). */

const PLACEMENT: XdsPlacement = {
  listener: { address: '127.0.0.1', port: 8080 },
  extAuthz: { cluster: 'ext_authz' },
  authority: { domains: ['oauth.oto.tools'], httpCluster: 'token_authority', grpcCluster: 'token_authority_grpc' },
};

function route(input: RouteInput): RouteSpec {
  const validated = validateRoute(input);
  if (!validated.ok) throw new Error(JSON.stringify(validated.issues));
  return validated.route;
}

const FOO = route({
  id: 'foo',
  frontend: { domains: ['foo.oto.tools', 'foo.oto.tools:*'], pathPrefix: '/' },
  backend: {
    targets: [
      { hostname: '127.0.0.1', port: 8081, weight: 3 },
      { hostname: '127.0.0.2', port: 8082 },
    ],
  },
  apikeys: { publicPathPrefixes: ['/public/'] },
});
const FOO_API = route({
  id: 'foo-api',
  frontend: { domains: ['foo.oto.tools'], pathPrefix: '/api/' },
  backend: { targets: [{ hostname: 'api.internal', port: 443, tls: true }], connectTimeoutMs: 1500, requestTimeoutMs: 0 },
  apikeys: { extractors: ['basic', 'clientId'], requiredScopes: ['read'], stripCredential: true, quotas: false },
});
const OPEN = route({
  id: 'open',
  frontend: { domains: ['*.oto.tools'] },
  backend: { targets: [{ hostname: '10.0.0.1', port: 80 }] },
  apikeys: { enabled: false },
});

type Decoded = Record<string, any>;
const decoded = (routes: RouteSpec[]) => decodeSnapshot(new XdsResourceBuilder(PLACEMENT).build(routes)) as Record<string, Decoded>;
const vhost = (config: Decoded, name: string) => config.virtual_hosts.find((each: Decoded) => each.name === name);
const extAuthzOf = (entry: Decoded) => entry.typed_per_filter_config['envoy.filters.http.ext_authz'];

describe('xDS resources built from routes', () => {
  it('one listener: HCM with ext_authz (fail closed) then the router, its routes by RDS over ADS', () => {
    const listener = decoded([FOO])[LISTENER].ingress_http;
    assert.deepEqual(listener.address, { socket_address: { address: '127.0.0.1', port_value: 8080 } });
    const hcm = listener.filter_chains[0].filters[0].typed_config;
    assert.equal(hcm.rds.route_config_name, 'ingress_http');
    assert.deepEqual(hcm.rds.config_source, { ads: {}, resource_api_version: 'V3' });
    assert.deepEqual(
      hcm.http_filters.map((filter: Decoded) => filter.name),
      ['envoy.filters.http.ext_authz', 'envoy.filters.http.router'],
    );
    const extAuthz = hcm.http_filters[0].typed_config;
    assert.equal(extAuthz.grpc_service.envoy_grpc.cluster_name, 'ext_authz');
    assert.equal(extAuthz.failure_mode_allow, false);
    assert.deepEqual(hcm.use_remote_address, { value: true });
  });

  it('with xds.tls, an HTTPS listener beside it: the same routes behind a TLS context naming the files Envoy reads', () => {
    const settings = xdsSettingsSchema.parse({
      listener: { address: '127.0.0.1', port: 8080 },
      tls: { port: 8443, certificateFile: '/etc/envoy/tls/tls.crt', privateKeyFile: '/etc/envoy/tls/tls.key' },
    });
    const listeners = decodeSnapshot(new XdsResourceBuilder(xdsPlacement(settings)).build([FOO]))[LISTENER] as Record<string, Decoded>;
    assert.deepEqual(Object.keys(listeners), ['ingress_http', 'ingress_https']);
    const https = listeners.ingress_https;
    assert.deepEqual(https.address, { socket_address: { address: '127.0.0.1', port_value: 8443 } });
    const chain = https.filter_chains[0];
    assert.equal(chain.transport_socket.name, 'envoy.transport_sockets.tls');
    const tls = chain.transport_socket.typed_config;
    assert.equal(tls['@type'], 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext');
    assert.deepEqual(tls.common_tls_context.tls_certificates, [
      { certificate_chain: { filename: '/etc/envoy/tls/tls.crt' }, private_key: { filename: '/etc/envoy/tls/tls.key' } },
    ]);
    assert.deepEqual(tls.common_tls_context.alpn_protocols, ['h2', 'http/1.1']);
    const hcm = chain.filters[0].typed_config;
    assert.equal(hcm.stat_prefix, 'ingress_https');
    assert.equal(hcm.rds.route_config_name, 'ingress_http', 'the routes of the HTTP listener');
    assert.deepEqual(
      hcm.http_filters.map((filter: Decoded) => filter.name),
      listeners.ingress_http.filter_chains[0].filters[0].typed_config.http_filters.map((filter: Decoded) => filter.name),
    );
    assert.equal(listeners.ingress_http.filter_chains[0].transport_socket, undefined);
    // Without tls, one listener; a relative path is refused, naming the field.
    assert.deepEqual(Object.keys(decoded([FOO])[LISTENER]), ['ingress_http']);
    const relative = xdsSettingsSchema.safeParse({ tls: { certificateFile: 'tls.crt', privateKeyFile: '/k' } });
    assert.equal(relative.success, false);
    assert.deepEqual(relative.error?.issues[0].path, ['tls', 'certificateFile']);
  });

  it('xds.tls.clientCertificate (RFC 8705): asks for a certificate, forwards it (XFCC, include_peer_certificate); unverified without a CA', () => {
    const TLS = { port: 8443, certificateFile: '/etc/envoy/tls/tls.crt', privateKeyFile: '/etc/envoy/tls/tls.key' };
    const build = (tls: Record<string, unknown>) => {
      const settings = xdsSettingsSchema.parse({ listener: { address: '127.0.0.1', port: 8080 }, tls: { ...TLS, ...tls } });
      const snapshot = decodeSnapshot(new XdsResourceBuilder({ ...PLACEMENT, ...xdsPlacement(settings) }).build([FOO]));
      const listeners = snapshot[LISTENER] as Record<string, Decoded>;
      const chain = (name: string) => listeners[name].filter_chains[0];
      const hcm = (name: string) => chain(name).filters[0].typed_config;
      const oauth = vhost((snapshot[ROUTE_CONFIGURATION] as Record<string, Decoded>).ingress_http, 'oauth.oto.tools');
      return { tls: chain('ingress_https').transport_socket.typed_config, hcm, oauth };
    };
    const sanitizes = (hcm: Decoded) => {
      assert.equal(hcm.forward_client_cert_details, 'SANITIZE', 'a client-written XFCC is dropped');
      assert.equal(hcm.set_current_client_cert_details, undefined);
      assert.equal(hcm.http_filters[0].typed_config.include_peer_certificate, false);
    };
    const setsXfcc = (hcm: Decoded) => {
      assert.equal(hcm.forward_client_cert_details, 'SANITIZE_SET');
      assert.deepEqual(hcm.set_current_client_cert_details, { subject: { value: true }, cert: true, dns: true, uri: true });
      assert.equal(hcm.http_filters[0].typed_config.include_peer_certificate, true);
    };
    const unverifiedRoute = (oauth: Decoded) =>
      oauth.routes.find((entry: Decoded) => entry.match.tls_context !== undefined) as Decoded | undefined;

    // off (the default): today's listener, no certificate asked for, XFCC dropped on both listeners.
    const off = build({});
    assert.equal(off.tls.common_tls_context.validation_context, undefined);
    assert.equal(off.tls.require_client_certificate, undefined);
    sanitizes(off.hcm('ingress_http'));
    sanitizes(off.hcm('ingress_https'));
    assert.equal(unverifiedRoute(off.oauth), undefined);

    // optional without a CA: any certificate is taken (the handshake proves the key), and said unverified to the authority.
    const optional = build({ clientCertificate: 'optional' });
    assert.deepEqual(optional.tls.common_tls_context.validation_context, { trust_chain_verification: 'ACCEPT_UNTRUSTED' });
    assert.deepEqual(optional.tls.require_client_certificate, { value: false });
    sanitizes(optional.hcm('ingress_http'));
    setsXfcc(optional.hcm('ingress_https'));
    const marked = unverifiedRoute(optional.oauth);
    assert.deepEqual(marked?.match, { prefix: '/', tls_context: { presented: { value: true }, validated: { value: false } } });
    assert.equal(marked?.route.cluster, 'token_authority');
    assert.deepEqual(marked?.request_headers_to_add, [
      { header: { key: 'x-client-cert-unverified', value: 'true' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
    ]);
    const slash = optional.oauth.routes.filter((entry: Decoded) => entry.match.prefix === '/');
    assert.equal(slash.length, 2);
    assert.equal(slash[0], marked, 'tried before the plain / route');
    assert.equal(extAuthzOf(marked!).disabled, true);

    // required with a CA: verified against it, no handshake without one, nothing said unverified.
    const required = build({ clientCertificate: 'required', clientCaFile: '/etc/envoy/tls/clients.pem' });
    assert.deepEqual(required.tls.common_tls_context.validation_context, { trusted_ca: { filename: '/etc/envoy/tls/clients.pem' } });
    assert.deepEqual(required.tls.require_client_certificate, { value: true });
    setsXfcc(required.hcm('ingress_https'));
    sanitizes(required.hcm('ingress_http'));
    assert.equal(unverifiedRoute(required.oauth), undefined);

    // Settings refused, naming the field.
    for (const [tls, field] of [
      [{ clientCertificate: 'yes' }, 'clientCertificate'],
      [{ clientCertificate: 'optional', clientCaFile: 'clients.pem' }, 'clientCaFile'],
      [{ clientCaFile: '/etc/envoy/tls/clients.pem' }, 'clientCaFile'],
    ] as const) {
      const refused = xdsSettingsSchema.safeParse({ tls: { ...TLS, ...tls } });
      assert.equal(refused.success, false, JSON.stringify(tls));
      assert.deepEqual(refused.error?.issues[0].path, ['tls', field], JSON.stringify(refused.error?.issues));
    }
  });

  it('a virtual host per host (ports folded, the port ignored in matching), routes longest prefix first, public prefixes open', () => {
    const config = decoded([FOO, FOO_API, OPEN])[ROUTE_CONFIGURATION].ingress_http;
    assert.equal(config.ignore_port_in_host_matching, true);
    assert.deepEqual(config.virtual_hosts.map((each: Decoded) => each.name).sort(), [
      '*',
      '*.oto.tools',
      'foo.oto.tools',
      'oauth.oto.tools',
    ]);
    const foo = vhost(config, 'foo.oto.tools');
    assert.deepEqual(foo.domains, ['foo.oto.tools']);
    // foo.oto.tools and foo.oto.tools:* are one host: foo's entries appear once.
    assert.deepEqual(
      foo.routes.map((each: Decoded) => [each.name, each.match.prefix, each.route.cluster]),
      [
        ['foo', '/public/', 'route_foo'],
        ['foo-api', '/api/', 'route_foo-api'],
        ['foo', '/', 'route_foo'],
      ],
    );
    assert.deepEqual(extAuthzOf(foo.routes[0]).disabled, true);
    const extensions = extAuthzOf(foo.routes[2]).check_settings.context_extensions;
    assert.equal(extensions[ROUTE_EXTENSION], 'foo');
    assert.deepEqual(JSON.parse(extensions[POLICY_EXTENSION]), policyOf(FOO));
    assert.deepEqual(foo.routes[1].route.timeout, { seconds: 0, nanos: 0 }, 'requestTimeoutMs 0: no timeout');
    assert.deepEqual(foo.routes[2].route.timeout, { seconds: 30, nanos: 0 });
    // apikeys.enabled false: no check at all.
    assert.equal(extAuthzOf(vhost(config, '*.oto.tools').routes[0]).disabled, true);
    // Whatever no route claims: 404, no check.
    const fallback = vhost(config, '*').routes;
    assert.equal(fallback.length, 1);
    assert.equal(fallback[0].direct_response.status, 404);
    assert.equal(extAuthzOf(fallback[0]).disabled, true);
    // The authority's own host: its gRPC face and REST, never behind ext_authz.
    const oauth = vhost(config, 'oauth.oto.tools').routes;
    assert.deepEqual(
      oauth.map((each: Decoded) => [each.match.prefix, each.route.cluster, extAuthzOf(each).disabled]),
      [
        ['/token_authority.v1.TokenAuthority/', 'token_authority_grpc', true],
        ['/grpc.health.v1.Health/', 'token_authority_grpc', true],
        ['/grpc.reflection.', 'token_authority_grpc', true],
        ['/', 'token_authority', true],
      ],
    );
  });

  it('a cluster per route: EDS for IP targets (weights in the assignment), STRICT_DNS with TLS and SNI for a host name', () => {
    const snapshot = decoded([FOO, FOO_API]);
    const foo = snapshot[CLUSTER].route_foo;
    assert.equal(foo.type, 'EDS');
    assert.deepEqual(foo.eds_cluster_config.eds_config, { ads: {}, resource_api_version: 'V3' });
    assert.deepEqual(foo.connect_timeout, { seconds: 2, nanos: 0 });
    const assignment = snapshot[CLUSTER_LOAD_ASSIGNMENT].route_foo;
    assert.deepEqual(
      assignment.endpoints[0].lb_endpoints.map((each: Decoded) => [
        each.endpoint.address.socket_address.address,
        each.endpoint.address.socket_address.port_value,
        each.load_balancing_weight.value,
      ]),
      [
        ['127.0.0.1', 8081, 3],
        ['127.0.0.2', 8082, 1],
      ],
    );
    const api = snapshot[CLUSTER]['route_foo-api'];
    assert.equal(api.type, 'STRICT_DNS');
    assert.deepEqual(api.connect_timeout, { seconds: 1, nanos: 500_000_000 });
    assert.equal(api.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address, 'api.internal');
    assert.equal(api.transport_socket.typed_config.sni, 'api.internal');
    assert.equal(snapshot[CLUSTER_LOAD_ASSIGNMENT]['route_foo-api'], undefined);
  });

  it('a disabled route is not served: no cluster, no route; its host answers 404', () => {
    const snapshot = decoded([{ ...FOO, enabled: false }, FOO_API]);
    assert.equal(snapshot[CLUSTER].route_foo, undefined);
    const foo = vhost(snapshot[ROUTE_CONFIGURATION].ingress_http, 'foo.oto.tools');
    assert.deepEqual(
      foo.routes.map((each: Decoded) => each.name),
      ['foo-api'],
    );
  });

  it('versions are hashes of the content: equal on two builders (replicas); a change of targets moves only its endpoints', () => {
    const first = new XdsResourceBuilder(PLACEMENT).build([FOO, FOO_API, OPEN]);
    const builder = new XdsResourceBuilder(PLACEMENT);
    const again = builder.build([OPEN, FOO, FOO_API]);
    const versions = (snapshot: typeof first) =>
      Object.fromEntries(
        [...snapshot].flatMap(([type, resources]) => [...resources.values()].map((each) => [`${type} ${each.name}`, each.version])),
      );
    assert.deepEqual(versions(again), versions(first), 'the order routes come in changes nothing');
    const moved = builder.build([
      OPEN,
      { ...FOO, backend: { ...FOO.backend, targets: [{ hostname: '127.0.0.9', port: 9, tls: false, weight: 1 }] } },
      FOO_API,
    ]);
    const changed = Object.entries(versions(moved))
      .filter(([key, version]) => versions(first)[key] !== version)
      .map(([key]) => key);
    assert.deepEqual(changed, [`${CLUSTER_LOAD_ASSIGNMENT} route_foo`]);
  });

  it('built change by change, every snapshot is what a fresh builder makes of the same routes; changedNames names what moved', () => {
    const builder = new XdsResourceBuilder(PLACEMENT);
    const bytesOf = (snapshot: ReturnType<XdsResourceBuilder['build']>) =>
      Object.fromEntries(
        [...snapshot].flatMap(([type, resources]) =>
          [...resources.values()].map((each) => [`${type} ${each.name}`, `${each.version} ${Buffer.from(each.value).toString('base64')}`]),
        ),
      );
    const on = (id: string, domains: string[], extra: Partial<RouteInput> = {}) =>
      route({ id, frontend: { domains }, backend: { targets: [{ hostname: '127.0.0.1', port: 80 }] }, ...extra });
    let before = bytesOf(new XdsResourceBuilder(PLACEMENT).build([]));
    const steps: { routes: RouteSpec[]; moved: string[] }[] = [];
    const a = on('a', ['a.oto.tools']);
    const b = on('b', ['b.oto.tools', 'shared.oto.tools']);
    const c = on('c', ['shared.oto.tools'], { frontend: { domains: ['shared.oto.tools'], pathPrefix: '/c/' } });
    steps.push({
      routes: [a, b, c],
      moved: [
        'cluster route_a',
        'cluster route_b',
        'cluster route_c',
        'endpoints route_a',
        'endpoints route_b',
        'endpoints route_c',
        'routes',
      ],
    });
    // The connect timeout: the cluster only.
    const b2 = { ...b, backend: { ...b.backend, connectTimeoutMs: 900 } };
    steps.push({ routes: [a, b2, c], moved: ['cluster route_b'] });
    // The same content in a new object: nothing.
    steps.push({ routes: [{ ...a }, b2, c], moved: [] });
    // A moves to another domain (one host gone, one new); c gets a public prefix on a shared host.
    const a2 = { ...a, frontend: { ...a.frontend, domains: ['z.oto.tools'] } };
    const c2 = { ...c, apikeys: { ...c.apikeys, publicPathPrefixes: ['/c/open/'] } };
    steps.push({ routes: [a2, b2, c2], moved: ['routes'] });
    // b disabled, c to a DNS target (no endpoints of its own), a duplicate id (the first one counts).
    const c3 = { ...c2, backend: { ...c2.backend, targets: [{ hostname: 'c.internal', port: 80, tls: false, weight: 1 }] } };
    steps.push({
      routes: [a2, { ...b2, enabled: false }, c3, { ...a2, frontend: { ...a2.frontend, domains: ['dup.oto.tools'] } }],
      moved: ['cluster route_b', 'cluster route_c', 'endpoints route_b', 'endpoints route_c', 'routes'],
    });
    // b back, a gone: the host shared by b and c keeps both.
    steps.push({ routes: [c3, b2], moved: ['cluster route_a', 'cluster route_b', 'endpoints route_a', 'endpoints route_b', 'routes'] });
    steps.push({ routes: [], moved: ['cluster route_b', 'cluster route_c', 'endpoints route_b', 'routes'] });
    // A third builder follows by deltas (update): the routes that differ from the step before, the ids gone.
    const byDelta = new XdsResourceBuilder(PLACEMENT);
    let previous = new Map<string, RouteSpec>();
    for (const [index, step] of steps.entries()) {
      const incremental = bytesOf(builder.build(step.routes));
      const fresh = bytesOf(new XdsResourceBuilder(PLACEMENT).build(step.routes));
      assert.deepEqual(incremental, fresh, `step ${index}`);
      const current = new Map<string, RouteSpec>();
      for (const each of step.routes) if (!current.has(each.id)) current.set(each.id, each);
      const upserted = [...current.values()].filter((each) => previous.get(each.id) !== each);
      const removed = [...previous.keys()].filter((id) => !current.has(id));
      assert.deepEqual(bytesOf(byDelta.update(upserted, removed)), fresh, `step ${index} by delta`);
      assert.deepEqual(
        [...byDelta.changedNames].map(([type, names]) => [type, [...names].sort()]),
        [...builder.changedNames].map(([type, names]) => [type, [...names].sort()]),
        `step ${index}: changedNames by delta`,
      );
      previous = current;
      const moved = [...builder.changedNames].flatMap(([type, names]) =>
        [...names].map((name) =>
          type === CLUSTER ? `cluster ${name}` : type === CLUSTER_LOAD_ASSIGNMENT ? `endpoints ${name}` : 'routes',
        ),
      );
      assert.deepEqual(moved.sort(), [...step.moved].sort(), `step ${index}: changedNames`);
      // What moved between the snapshots is exactly what changedNames says.
      const differs = Object.keys({ ...before, ...incremental })
        .filter((key) => before[key] !== incremental[key])
        .map((key) =>
          key.startsWith(`${CLUSTER} `)
            ? `cluster ${key.slice(CLUSTER.length + 1)}`
            : key.startsWith(`${CLUSTER_LOAD_ASSIGNMENT} `)
              ? `endpoints ${key.slice(CLUSTER_LOAD_ASSIGNMENT.length + 1)}`
              : 'routes',
        );
      assert.deepEqual(differs.sort(), [...step.moved].sort(), `step ${index}: the snapshots`);
      before = incremental;
    }
    const shared = vhost(decodeSnapshot(builder.build([c3, b2]))[ROUTE_CONFIGURATION].ingress_http, 'shared.oto.tools');
    assert.deepEqual(
      shared.routes.map((each: Decoded) => [each.name, each.match.prefix]),
      [
        ['c', '/c/open/'],
        ['c', '/c/'],
        ['b', '/'],
      ],
    );
  });

  it('the RouteConfiguration written from kept route bytes is what protobufjs writes for the same message', () => {
    const value = new XdsResourceBuilder(PLACEMENT).build([FOO, FOO_API, OPEN]).get(ROUTE_CONFIGURATION)?.get('ingress_http')?.value;
    assert.ok(value);
    const type = envoyType('envoy.config.route.v3.RouteConfiguration');
    assert.deepEqual(Buffer.from(type.encode(type.decode(value)).finish()), Buffer.from(value));
  });
});

describe("a route's policy in context_extensions, read by ext-authz", () => {
  it('parses each text once; a text that is not JSON or not a policy is no policy (the route is closed)', () => {
    const policies = new InlinePolicies();
    const text = JSON.stringify(policyOf(FOO_API));
    const parsed = policies.resolve(text);
    assert.deepEqual(parsed, policyOf(FOO_API));
    assert.equal(policies.resolve(text), parsed, 'cached');
    assert.deepEqual(policies.resolve('{}')?.extractors, ['bearer'], 'defaults');
    for (const bad of ['', 'nope', '[]', '{"extractors":["magic"]}', '{"unknown":1}', '{"extractors":[]}'])
      assert.equal(policies.resolve(bad), undefined, bad);
  });

  it('the authorizer decides by the inline policy, over a config policy of the same name, and denies an unreadable one', async () => {
    const pair = testKeyPair('kp-1');
    const secret = 's'.repeat(40);
    const replica = replicaWith(
      [pair],
      [apiKey('app', { authorizedEntities: ['route_foo-api'], scopes: ['read'], secrets: [{ hash: await hashSecret(secret) }] })],
    );
    const authorizer = new Authorizer(authzConfig({ 'foo-api': { extractors: ['bearer'] } }), replica);
    const basic = `Basic ${Buffer.from(`app:${secret}`).toString('base64')}`;
    const inlinePolicy = JSON.stringify(policyOf(FOO_API));
    const allowed = await authorizer.check({ policy: 'foo-api', inlinePolicy, headers: { authorization: basic } });
    assert.equal(allowed.allowed, true);
    assert.ok(allowed.allowed && allowed.headersToRemove.includes('authorization'), 'stripCredential came with the route');
    // The config's policy of that name takes bearer tokens only.
    const byConfig = await authorizer.check({ policy: 'foo-api', headers: { authorization: basic } });
    assert.equal(byConfig.allowed, false);
    const unreadable = await authorizer.check({ policy: 'foo-api', inlinePolicy: '{not json', headers: { authorization: basic } });
    assert.equal(!unreadable.allowed && unreadable.reason, 'unknown_policy');
    // Another route's entity: not authorized.
    const other = JSON.stringify(policyOf(route({ ...FOO_API, id: 'other', apikeys: { extractors: ['basic'] } } as RouteInput)));
    const denied = await authorizer.check({ policy: 'other', inlinePolicy: other, headers: { authorization: basic } });
    assert.equal(!denied.allowed && denied.reason, 'not_authorized');
    assert.ok(authorizer.policyNames.has('foo-api') && authorizer.policyNames.has('other'), 'route ids become metric labels');
  });
});
