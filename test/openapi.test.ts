import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { CATCH_ALL_ROUTES, COMMITTED_OPENAPI, openApiDocument, openApiJson, STATIC_ROUTES } from '../services/token-authority/openapi';
import { ADMIN_TOKEN, startTestAuthority, type TestAuthority } from './support/authority';
import { findSchemathesis, requireSchemathesis, run, schemathesisSkip } from './support/schemathesis';

type Document = { paths: Record<string, Record<string, any>>; components: Record<string, Record<string, unknown>> } & Record<string, any>;
const OPERATION_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

/** `METHOD /path/{param}` for every operation of a document. */
function documentedRoutes(document: Document): Set<string> {
  const routes = new Set<string>();
  for (const [path, item] of Object.entries(document.paths)) {
    for (const method of Object.keys(item).filter((key) => OPERATION_METHODS.includes(key))) routes.add(`${method.toUpperCase()} ${path}`);
  }
  return routes;
}

/**
 * `METHOD /path/{param}` for every route the app registered, as Fastify reports them. HEAD
 * routes Fastify adds for each GET are left out; so are the catch-all and static routes, which
 * the document lists under x-catch-all-routes and x-static-routes (they are no API operation).
 */
function registeredRoutes(routes: { method: string; url: string }[]): {
  endpoints: Set<string>;
  catchAll: Set<string>;
  staticFiles: Set<string>;
  extraHead: string[];
} {
  const endpoints = new Set<string>();
  const catchAll = new Set<string>();
  const staticFiles = new Set<string>();
  const staticPaths = STATIC_ROUTES.map((route) => route.path);
  for (const { method, url } of routes) {
    if (staticPaths.includes(url)) staticFiles.add(url);
    else if (url.endsWith('*')) catchAll.add(url);
    else if (method !== 'HEAD') endpoints.add(`${method} ${url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')}`);
  }
  const extraHead = routes
    .filter(
      ({ method, url }) => method === 'HEAD' && !url.endsWith('*') && !routes.some((route) => route.method === 'GET' && route.url === url),
    )
    .map(({ url }) => url);
  return { endpoints, catchAll, staticFiles, extraHead };
}

function difference(a: Set<string>, b: Set<string>): string[] {
  return [...a].filter((item) => !b.has(item)).sort();
}

/** Every `$ref` in the document points at something that exists. */
function unresolvedRefs(document: unknown): string[] {
  const missing: string[] = [];
  const resolve = (pointer: string) =>
    pointer
      .slice(2)
      .split('/')
      .reduce<any>((node, part) => node?.[part.replace(/~1/g, '/').replace(/~0/g, '~')], document);
  const walk = (node: unknown) => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (node && typeof node === 'object') {
      for (const [key, value] of Object.entries(node)) {
        if (key === '$ref' && typeof value === 'string' && resolve(value) === undefined) missing.push(value);
        else walk(value);
      }
    }
  };
  walk(document);
  return missing;
}

describe('OpenAPI document (docs/openapi.json, GET /openapi.json)', () => {
  let authority: TestAuthority;
  const document = openApiDocument() as Document;

  before(async () => {
    authority = await startTestAuthority();
  });
  after(async () => {
    await authority.stop();
  });

  it('the committed docs/openapi.json is what the code generates (regenerate with npm run openapi)', () => {
    const committed = readFileSync(COMMITTED_OPENAPI, 'utf8');
    assert.equal(committed, openApiJson(), 'docs/openapi.json is stale: run `npm run openapi` and commit it');
  });

  it('is served at GET /openapi.json, public and cacheable', async () => {
    const response = await fetch(`${authority.url}/openapi.json`);
    assert.equal(response.status, 200);
    assert.match(String(response.headers.get('content-type')), /^application\/json/);
    assert.equal(response.headers.get('cache-control'), 'public, max-age=3600');
    assert.deepEqual(await response.json(), JSON.parse(openApiJson()));
  });

  it('documents exactly the routes the running app registers (methods and paths)', () => {
    const registered = registeredRoutes(authority.routes);
    const documented = documentedRoutes(document);
    assert.ok(registered.endpoints.size > 15, `too few routes seen: ${[...registered.endpoints]}`);
    assert.deepEqual(difference(registered.endpoints, documented), [], 'routes the app serves that the document lacks');
    assert.deepEqual(difference(documented, registered.endpoints), [], 'documented operations the app does not serve');
    assert.deepEqual([...registered.catchAll].sort(), CATCH_ALL_ROUTES.map((route) => route.path).sort());
    // The console's files are served only when it was built (npm run build builds it).
    for (const url of registered.staticFiles) {
      const methods = authority.routes.filter((route) => route.url === url).map((route) => route.method);
      assert.deepEqual(methods.sort(), ['GET', 'HEAD'], url);
    }
    assert.deepEqual(registered.extraHead, [], 'HEAD routes without a GET');
  });

  it('a documented path asked with a method it does not document answers 405 with Allow; an unknown path 404', async () => {
    const documented = documentedRoutes(document);
    for (const [method, path, allow] of [
      ['PUT', '/health', 'GET, HEAD'],
      ['GET', '/.well-known/otoroshi/oauth/token', 'POST'],
      ['DELETE', '/.well-known/otoroshi/oauth/jwks.json', 'GET, HEAD'],
      ['POST', '/api/keypairs/some-id', 'DELETE, GET, HEAD, PATCH, PUT'],
    ]) {
      const response = await fetch(`${authority.url}${path}`, { method });
      assert.equal(response.status, 405, `${method} ${path}`);
      assert.equal(response.headers.get('allow'), allow, `${method} ${path}`);
      assert.deepEqual(await response.json(), { error: 'method_not_allowed', error_description: `use ${allow}` });
      // Allow lists exactly the documented methods (HEAD comes with GET).
      const template = [...documented]
        .map((route) => route.split(' '))
        .filter(([, route]) => new RegExp(`^${route.replace(/\{[^}]+\}/g, '[^/]+')}$`).test(path));
      assert.deepEqual(
        allow.split(', ').filter((verb) => verb !== 'HEAD'),
        template.map(([verb]) => verb).sort(),
      );
    }
    for (const path of ['/nowhere', '/.well-known/otoroshi/oauth/unknown', '/api/unknown']) {
      assert.equal((await fetch(`${authority.url}${path}`, { method: 'PUT' })).status, 404, path);
    }
  });

  it('what Schemathesis found stays fixed: unbounded grace periods, JSON null bodies', async () => {
    const created = await authority.admin('POST', '/api/apikeys', { clientId: 'found-by-schemathesis', clientSecret: 'a-secret-123' });
    assert.equal(created.status, 201);
    // 1e300 hours overflowed the old secret's expiry to Infinity, stored and shown as null.
    const huge = await authority.admin('POST', '/api/apikeys/found-by-schemathesis/rotate-secret', { gracePeriod: 1e300 });
    assert.equal(huge.status, 400);
    assert.deepEqual(
      huge.body.details.map((detail: { path: string }) => detail.path),
      ['gracePeriod'],
    );
    const fractional = await authority.admin('POST', '/api/apikeys/found-by-schemathesis/rotate-secret', { gracePeriod: 0.123456789 });
    assert.equal(fractional.status, 200);
    assert.ok(Number.isSafeInteger(fractional.body.previousSecretValidUntil), String(fractional.body.previousSecretValidUntil));
    for (const [method, path] of [
      ['POST', '/api/apikeys'],
      ['PATCH', '/api/apikeys/found-by-schemathesis'],
    ]) {
      const response = await fetch(`${authority.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: 'null',
      });
      assert.equal(response.status, 400, `${method} ${path} with a JSON null body`);
    }
  });

  it('the route comparison notices a missing or an extra operation', () => {
    const registered = registeredRoutes(authority.routes);
    const trimmed = structuredClone(document);
    delete trimmed.paths['/health'];
    trimmed.paths['/nowhere'] = { get: {} };
    assert.deepEqual(difference(registered.endpoints, documentedRoutes(trimmed)), ['GET /health']);
    assert.deepEqual(difference(documentedRoutes(trimmed), registered.endpoints), ['GET /nowhere']);
  });

  it('is self-consistent: unique operation ids, resolvable $refs and links, declared path parameters, security schemes defined', () => {
    const operations = Object.entries(document.paths).flatMap(([path, item]) =>
      Object.entries(item)
        .filter(([method]) => OPERATION_METHODS.includes(method))
        .map(([method, operation]) => ({ path, method, operation })),
    );
    const ids = operations.map(({ operation }) => operation.operationId);
    assert.equal(new Set(ids).size, ids.length, 'operationIds are unique');
    assert.deepEqual(unresolvedRefs(document), []);
    const schemes = Object.keys(document.components.securitySchemes);
    for (const { path, method, operation } of operations) {
      const where = `${method.toUpperCase()} ${path}`;
      const declared = (operation.parameters ?? [])
        .filter((parameter: any) => parameter.in === 'path')
        .map((parameter: any) => parameter.name);
      assert.deepEqual(declared.sort(), [...path.matchAll(/\{([^}]+)\}/g)].map((match) => match[1]).sort(), `${where}: path parameters`);
      for (const requirement of operation.security ?? [])
        for (const name of Object.keys(requirement)) assert.ok(schemes.includes(name), `${where}: ${name}`);
      for (const [status, response] of Object.entries(operation.responses as Record<string, any>)) {
        for (const link of Object.values(response.links ?? {}) as any[])
          assert.ok(ids.includes(link.operationId), `${where} ${status}: link to ${link.operationId}`);
      }
      if (path.startsWith('/api/')) {
        assert.deepEqual(operation.security, [{ adminBearer: [] }], `${where}: admin bearer`);
        assert.equal(operation.responses['401'].headers['WWW-Authenticate'].required, true, `${where}: 401 with WWW-Authenticate`);
      }
      if (operation.requestBody) assert.ok(operation.responses['413'], `${where}: 413 for a body over the limit`);
    }
    const tokenBody = document.paths['/.well-known/otoroshi/oauth/token'].post.requestBody.content;
    assert.deepEqual(Object.keys(tokenBody).sort(), ['application/json', 'application/x-www-form-urlencoded']);
  });

  const schemathesis = findSchemathesis();
  it('is a valid OpenAPI 3.1 document (Schemathesis loads and validates it; a broken copy is refused)', {
    skip: schemathesisSkip(schemathesis),
  }, async () => {
    const { python } = requireSchemathesis(schemathesis);
    const broken = structuredClone(document);
    broken.paths['/health'].get.security = 'everyone';
    const script = [
      'import json, sys, schemathesis',
      'for name, raw in json.load(sys.stdin).items():',
      '    try:',
      '        schema = schemathesis.openapi.from_dict(raw)',
      '        schema.validate()',
      '        assert raw["openapi"].startswith("3.1"), raw["openapi"]',
      '        print(name, "valid", sum(1 for _ in schema.get_all_operations()))',
      '    except Exception as error:',
      '        print(name, "invalid", type(error).__name__, str(error).splitlines()[0])',
    ].join('\n');
    const result = await run(python, ['-c', script], 60_000, { input: JSON.stringify({ document, broken }) });
    assert.equal(result.code, 0, result.output);
    const operationCount = documentedRoutes(document).size;
    assert.match(result.output, new RegExp(`^document valid ${operationCount}$`, 'm'), result.output);
    assert.match(result.output, /^broken invalid ValidationError/m, result.output);
  });
});
