import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type RouteIssue, routeConflicts, routeSetConflicts, type RouteSpec, validateRoute } from '../../libs/core/routes';

const minimal = { id: 'foo', frontend: { domains: ['foo.oto.tools'] }, backend: { targets: [{ hostname: 'echo', port: 8081 }] } };

function valid(input: unknown): RouteSpec {
  const result = validateRoute(input);
  assert.ok(result.ok, `refused: ${JSON.stringify(!result.ok && result.issues)}`);
  return result.route;
}

function issues(input: unknown): RouteIssue[] {
  const result = validateRoute(input);
  assert.equal(result.ok, false, 'accepted');
  return result.ok ? [] : result.issues;
}

function with_(patch: (route: typeof minimal & Record<string, unknown>) => void) {
  const route = structuredClone(minimal) as typeof minimal & Record<string, unknown>;
  patch(route);
  return route;
}

describe('validateRoute', () => {
  it("fills Otoroshi's defaults, authorizedEntities from the id", () => {
    assert.deepEqual(valid(minimal), {
      id: 'foo',
      name: 'foo',
      description: '',
      enabled: true,
      frontend: { domains: ['foo.oto.tools'], pathPrefix: '/' },
      backend: { targets: [{ hostname: 'echo', port: 8081, tls: false, weight: 1 }], connectTimeoutMs: 2000, requestTimeoutMs: 30_000 },
      apikeys: {
        enabled: true,
        extractors: ['bearer'],
        authorizedEntities: ['route_foo'],
        requiredScopes: [],
        audiences: [],
        stripCredential: false,
        clientIdHeader: 'otoroshi-client-id',
        clientSecretHeader: 'otoroshi-client-secret',
        quotas: true,
        quotaFailure: 'open',
        publicPathPrefixes: [],
      },
      metadata: {},
    });
  });

  it('keeps what is given, lower-casing domains and header names', () => {
    const route = valid({
      ...minimal,
      name: 'Bar',
      frontend: { domains: ['Bar.Oto.Tools', '*.oto.tools:8080', 'bar.oto.tools:*', '*'], pathPrefix: '/api/' },
      apikeys: {
        extractors: ['basic', 'customHeaders'],
        authorizedEntities: ['group_all'],
        stripCredential: true,
        clientIdHeader: 'X-Id',
        publicPathPrefixes: ['/api/public/'],
      },
    });
    assert.equal(route.name, 'Bar');
    assert.deepEqual(route.frontend.domains, ['bar.oto.tools', '*.oto.tools:8080', 'bar.oto.tools:*', '*']);
    assert.deepEqual(route.apikeys.extractors, ['basic', 'customHeaders']);
    assert.deepEqual(route.apikeys.authorizedEntities, ['group_all']);
    assert.equal(route.apikeys.clientIdHeader, 'x-id');
    assert.deepEqual(route.apikeys.publicPathPrefixes, ['/api/public/']);
  });

  it('accepts IP targets and the limits of ports and weights', () => {
    const route = valid(
      with_((r) => {
        r.backend.targets = [
          { hostname: '127.0.0.1', port: 1, weight: 128, tls: true } as never,
          { hostname: '::1', port: 65535 } as never,
        ];
      }),
    );
    assert.equal(route.backend.targets.length, 2);
  });

  const refused: [string, unknown, string][] = [
    ['an unknown extractor', with_((r) => (r.apikeys = { extractors: ['bearer', 'cookie'] })), 'apikeys.extractors.1'],
    ['no extractor', with_((r) => (r.apikeys = { extractors: [] })), 'apikeys.extractors'],
    ['a domain that is not a host pattern', with_((r) => (r.frontend.domains = ['foo.oto.tools', 'foo bar'])), 'frontend.domains.1'],
    ['a wildcard in the middle', with_((r) => (r.frontend.domains = ['foo.*.tools'])), 'frontend.domains.0'],
    ['a domain with a path', with_((r) => (r.frontend.domains = ['foo.oto.tools/x'])), 'frontend.domains.0'],
    ['a domain port out of range', with_((r) => (r.frontend.domains = ['foo.oto.tools:65536'])), 'frontend.domains.0'],
    ['no domain', with_((r) => (r.frontend.domains = [])), 'frontend.domains'],
    ['a target port 0', with_((r) => (r.backend.targets[0].port = 0)), 'backend.targets.0.port'],
    ['a target port 65536', with_((r) => (r.backend.targets[0].port = 65536)), 'backend.targets.0.port'],
    ['a target port as text', with_((r) => (r.backend.targets[0].port = '80' as never)), 'backend.targets.0.port'],
    ['a weight of 129', with_((r) => ((r.backend.targets[0] as Record<string, unknown>).weight = 129)), 'backend.targets.0.weight'],
    ['a target host with a space', with_((r) => (r.backend.targets[0].hostname = 'echo backend')), 'backend.targets.0.hostname'],
    ['no target', with_((r) => (r.backend.targets = [])), 'backend.targets'],
    ['a pathPrefix without /', with_((r) => ((r.frontend as Record<string, unknown>).pathPrefix = 'api')), 'frontend.pathPrefix'],
    ['a pathPrefix with a query', with_((r) => ((r.frontend as Record<string, unknown>).pathPrefix = '/a?b')), 'frontend.pathPrefix'],
    ['a bad id', with_((r) => (r.id = 'foo/bar')), 'id'],
    ['no id', with_((r) => delete (r as Record<string, unknown>).id), 'id'],
    ['an unknown field', with_((r) => (r.plugins = [])), ''],
    ['an unknown apikeys field', with_((r) => (r.apikeys = { extractor: 'bearer' })), 'apikeys'],
    ['a bad header name', with_((r) => (r.apikeys = { clientIdHeader: 'x id' })), 'apikeys.clientIdHeader'],
    ['a bad authorized entity', with_((r) => (r.apikeys = { authorizedEntities: ['foo'] })), 'apikeys.authorizedEntities.0'],
    ['a bad quotaFailure', with_((r) => (r.apikeys = { quotaFailure: 'maybe' })), 'apikeys.quotaFailure'],
    [
      'a negative request timeout',
      with_((r) => ((r.backend as Record<string, unknown>).requestTimeoutMs = -1)),
      'backend.requestTimeoutMs',
    ],
    [
      'a public prefix outside pathPrefix',
      with_((r) => {
        (r.frontend as Record<string, unknown>).pathPrefix = '/api/';
        r.apikeys = { publicPathPrefixes: ['/public/'] };
      }),
      'apikeys.publicPathPrefixes.0',
    ],
    ['a control character in the name', with_((r) => (r.name = 'a\nb')), 'name'],
    ['not an object', 'foo', ''],
    ['null', null, ''],
  ];
  for (const [what, input, path] of refused) {
    it(`refuses ${what}, naming ${path || 'the body'}`, () => {
      const found = issues(input);
      assert.ok(
        found.some((issue) => issue.path === path),
        `no issue at "${path}": ${JSON.stringify(found)}`,
      );
    });
  }
});

describe('routeConflicts', () => {
  const foo = valid(minimal);
  const other = (patch: Record<string, unknown>) => valid({ ...minimal, id: 'other', ...patch });

  it('names the domain two enabled routes claim with the same prefix', () => {
    const candidate = other({ frontend: { domains: ['x.oto.tools', 'FOO.oto.tools'] } });
    assert.deepEqual(routeConflicts(candidate, [foo]), [
      { path: 'frontend.domains.1', message: 'route foo already serves foo.oto.tools with pathPrefix /' },
    ]);
  });

  it('lets a disabled route, another prefix, another port form or the route itself through', () => {
    assert.deepEqual(routeConflicts(other({ enabled: false }), [foo]), []);
    assert.deepEqual(routeConflicts(foo, [other({ enabled: false })]), []);
    assert.deepEqual(routeConflicts(other({ frontend: { domains: ['foo.oto.tools'], pathPrefix: '/v2/' } }), [foo]), []);
    assert.deepEqual(routeConflicts(other({ frontend: { domains: ['foo.oto.tools:*', '*.oto.tools'] } }), [foo]), []);
    assert.deepEqual(routeConflicts(valid({ ...minimal, name: 'renamed' }), [foo]), []);
  });

  it('finds every conflict within a set', () => {
    const set = [foo, other({}), other({ id: 'third', frontend: { domains: ['bar.oto.tools'] } })];
    assert.deepEqual(
      routeSetConflicts(set).map((conflict) => conflict.id),
      ['other'],
    );
  });
});
