import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Root, Writer, type Type } from 'protobufjs';
import type { AuthzRequest } from '../../libs/authz/authorizer';
import { CheckRequestDecoder, CheckResponseEncoder, encodeAllow, encodeDeny, MalformedCheckRequest } from '../../libs/authz/check-wire';
import { DENIALS, deny, type Allow, type Decision, type DenyReason } from '../../libs/authz/decision';
import { ENVOY_PROTO_INCLUDE_DIRS, EXT_AUTHZ_PROTO } from '../../libs/envoy/envoy-protos';
import { type CheckRequest, loadAuthorizationService, toAuthzRequest, toCheckResponse } from '../../services/ext-authz/envoy-check';

/*
 * The wire decoder and encoder of Envoy's Check (libs/authz/check-wire.ts) against the full
 * proto-loader decoding and encoding they replace on the hot path: the same policy, source
 * address and wanted headers for every CheckRequest shape Envoy sends, and for random messages
 * built by protobufjs from the real proto; the same bytes for every CheckResponse.
 */

const WANTED = ['authorization', 'traceparent', 'otoroshi-client-id', 'otoroshi-client-secret', 'x-api-key'];
const decoder = new CheckRequestDecoder(WANTED);
const CHECK = loadAuthorizationService().Check;

function loadEnvoyProtos(): Root {
  const root = new Root();
  root.resolvePath = (_origin, target) => {
    for (const dir of ENVOY_PROTO_INCLUDE_DIRS) if (existsSync(join(dir, target))) return join(dir, target);
    return target;
  };
  root.loadSync(EXT_AUTHZ_PROTO, { keepCase: true });
  root.resolveAll();
  return root;
}
const root = loadEnvoyProtos();
const CheckRequestType: Type = root.lookupType('envoy.service.auth.v3.CheckRequest');
const encodeRequest = (object: object) => Buffer.from(CheckRequestType.encode(CheckRequestType.fromObject(object)).finish());

/** What proto-loader's path made of these bytes, or the error it threw. */
function reference(bytes: Buffer): AuthzRequest | Error {
  try {
    return toAuthzRequest(CHECK.requestDeserialize(bytes) as CheckRequest);
  } catch (error) {
    return error as Error;
  }
}

function ours(bytes: Buffer): AuthzRequest | Error {
  try {
    return decoder.decode(bytes);
  } catch (error) {
    assert.ok(error instanceof MalformedCheckRequest || error instanceof RangeError, `unexpected error ${String(error)}`);
    return error as Error;
  }
}

/** The fields the authorizer and the transport read, in a comparable shape. */
function view(request: AuthzRequest) {
  const headers: Record<string, string | undefined> = {};
  for (const name of WANTED) headers[name] = Object.hasOwn(request.headers, name) ? request.headers[name] : undefined;
  return {
    policy: request.policy,
    inlinePolicy: request.inlinePolicy,
    sourceAddress: request.sourceAddress,
    clientCertificate: request.clientCertificate,
    headers,
  };
}

function assertSame(bytes: Buffer, context: string): AuthzRequest {
  const expected = reference(bytes);
  assert.ok(!(expected instanceof Error), `${context}: the reference refused it: ${String(expected)}`);
  const actual = ours(bytes);
  assert.ok(!(actual instanceof Error), `${context}: refused: ${String(actual)}`);
  assert.deepEqual(view(actual), view(expected), context);
  return actual;
}

const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJl';

/** A CheckRequest as Envoy 1.40's ext_authz filter sends it, headers as a map or (encode_raw_headers) a header_map. */
function envoyRequest(
  options: { headers?: [string, string | Buffer][]; raw?: boolean; route?: string; certificate?: string } = {},
): object {
  const headers: [string, string | Buffer][] = [
    [':authority', 'foo.oto.tools:8080'],
    [':path', '/api/items?page=2'],
    [':method', 'GET'],
    [':scheme', 'http'],
    ['user-agent', 'curl/8.5.0'],
    ['accept', '*/*'],
    ['x-forwarded-proto', 'http'],
    ['x-request-id', '0b0f8f3c-6d2c-4c5f-9d36-2a6a4b2e7c11'],
    ...(options.headers ?? []),
  ];
  const http: Record<string, unknown> = {
    id: '12345678901234567890',
    method: 'GET',
    path: '/api/items?page=2',
    host: 'foo.oto.tools:8080',
    scheme: 'http',
    protocol: 'HTTP/1.1',
    size: -1,
  };
  if (options.raw)
    http.header_map = {
      headers: headers.map(([key, value]) => ({ key, raw_value: Buffer.isBuffer(value) ? value : Buffer.from(value) })),
    };
  else http.headers = Object.fromEntries(headers.map(([key, value]) => [key, value.toString()]));
  return {
    attributes: {
      source: {
        address: { socket_address: { address: '127.0.0.1', port_value: 54321 } },
        ...(options.certificate !== undefined && { certificate: options.certificate, principal: 'CN=client' }),
      },
      destination: { address: { socket_address: { address: '127.0.0.1', port_value: 8080 } } },
      request: { time: { seconds: 1765000000, nanos: 5 }, http },
      context_extensions: { route: options.route ?? 'foo', other: 'x' },
      metadata_context: { filter_metadata: { 'envoy.filters.http.jwt_authn': { fields: { a: { string_value: 'b' } } } } },
      route_metadata_context: {},
      tls_session: { sni: 'foo.oto.tools' },
    },
  };
}

/** Hand-made wire bytes (protobufjs Writer) for shapes fromObject cannot express: repeated fields, unknown fields. */
const field = (writer: Writer, number: number, build: (inner: Writer) => void) => {
  writer.uint32((number << 3) | 2).fork();
  build(writer);
  return writer.ldelim();
};
const entry = (writer: Writer, number: number, key: string | Buffer, value: string | Buffer) =>
  field(writer, number, (inner) => {
    inner.uint32(10).bytes(Buffer.from(key));
    inner.uint32(18).bytes(Buffer.from(value));
  });
const wire = (build: (writer: Writer) => void) => {
  const writer = Writer.create();
  build(writer);
  return Buffer.from(writer.finish());
};

describe('CheckRequestDecoder against proto-loader', () => {
  it('reads what Envoy sends: a headers map, with the token, a traceparent and the route', () => {
    const bytes = encodeRequest(
      envoyRequest({
        headers: [
          ['authorization', `Bearer ${TOKEN}`],
          ['traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'],
        ],
      }),
    );
    const request = assertSame(bytes, 'headers map');
    assert.equal(request.policy, 'foo');
    assert.equal(request.sourceAddress, '127.0.0.1');
    assert.equal(request.headers.authorization, `Bearer ${TOKEN}`);
    assert.equal(request.headers[':path'], undefined, 'headers nobody reads are not decoded');
  });

  it('reads the peer certificate Envoy sends with include_peer_certificate (source.certificate, URL-encoded PEM)', () => {
    const pem = encodeURIComponent('-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n');
    const request = assertSame(encodeRequest(envoyRequest({ certificate: pem })), 'peer certificate');
    assert.equal(request.clientCertificate, pem);
    assert.equal(request.sourceAddress, '127.0.0.1');
    assert.equal(assertSame(encodeRequest(envoyRequest()), 'no certificate').clientCertificate, undefined);
    assert.equal(assertSame(encodeRequest(envoyRequest({ certificate: '' })), 'empty certificate').clientCertificate, undefined);
  });

  it('reads a header_map with raw_value (encode_raw_headers), names lower-cased, repeats joined', () => {
    const bytes = encodeRequest(
      envoyRequest({
        raw: true,
        headers: [
          ['Authorization', `Bearer ${TOKEN}`],
          ['x-api-key', 'one'],
          ['X-Api-Key', 'two'],
          ['x-api-key', ''],
        ],
      }),
    );
    const request = assertSame(bytes, 'header_map');
    assert.equal(request.headers.authorization, `Bearer ${TOKEN}`);
    assert.equal(request.headers['x-api-key'], 'one,two,');
  });

  it('reads header_map entries with value instead of raw_value, or both (raw_value wins), or neither', () => {
    const bytes = encodeRequest({
      attributes: {
        request: {
          http: {
            headers: { authorization: 'from the map' },
            header_map: {
              headers: [
                { key: 'authorization', value: 'Bearer v' },
                { key: 'otoroshi-client-id', value: 'by value', raw_value: Buffer.from('by raw') },
                { key: 'otoroshi-client-secret', raw_value: Buffer.alloc(0), value: 'not this' },
                { key: 'x-api-key' },
              ],
            },
          },
        },
      },
    });
    const request = assertSame(bytes, 'value / raw_value');
    assert.equal(request.headers['otoroshi-client-id'], 'by raw');
    assert.equal(request.headers['otoroshi-client-secret'], '');
    assert.equal(request.headers['x-api-key'], '');
  });

  it('keeps the headers map when header_map is present but empty', () => {
    const bytes = encodeRequest({ attributes: { request: { http: { headers: { authorization: 'a' }, header_map: { headers: [] } } } } });
    assert.equal(assertSame(bytes, 'empty header_map').headers.authorization, 'a');
    const explicit = wire((w) =>
      field(w, 1, (a) => field(a, 4, (r) => field(r, 2, (h) => field(entry(h, 3, 'authorization', 'a'), 13, () => undefined)))),
    );
    assert.equal(assertSame(explicit, 'zero-length header_map').headers.authorization, 'a');
  });

  it('reads non-ASCII and invalid UTF-8 bytes as the full decoding does (U+FFFD)', () => {
    const invalid = Buffer.from([0x42, 0x65, 0x61, 0x72, 0x65, 0x72, 0x20, 0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82, 0xf0, 0x9f, 0x98]);
    for (const raw of [false, true]) {
      const bytes = encodeRequest(
        envoyRequest({
          raw,
          route: 'fö☃',
          headers: [
            ['authorization', invalid],
            ['otoroshi-client-id', 'ünïcødé 😀'],
            ['ÄUTHORIZATION', 'x'],
            ['X-API-\u212Aey', 'kelvin'], // U+212A lower-cases to "k": x-api-key, the string way
            ['TraceParent', 'mixed case'],
          ],
        }),
      );
      assertSame(bytes, `non-UTF-8, raw=${raw}`);
      // Map values are proto strings, which fromObject would re-encode: put the invalid bytes on the wire directly.
      const direct = wire((w) =>
        field(w, 1, (a) => {
          field(a, 4, (r) => field(r, 2, (h) => entry(h, 3, 'authorization', invalid)));
          entry(a, 10, 'route', Buffer.from([0x66, 0xff]));
        }),
      );
      assertSame(direct, 'invalid UTF-8 in a map');
    }
  });

  it('keeps the last of a repeated map key, and lets a repeated message replace the earlier one', () => {
    const bytes = wire((w) => {
      field(w, 1, (a) => {
        entry(a, 10, 'route', 'first');
        field(a, 4, (r) => field(r, 2, (h) => entry(h, 3, 'authorization', 'old')));
      });
      field(w, 1, (a) => {
        field(a, 1, (peer) => {
          field(peer, 1, (address) => field(address, 1, (s) => s.uint32(18).string('10.0.0.1')));
          peer.uint32(42).string('first-certificate');
        });
        field(a, 1, (peer) => field(peer, 1, (address) => field(address, 1, (s) => s.uint32(18).string('10.0.0.2'))));
        field(a, 1, (peer) => {
          field(peer, 1, (address) => field(address, 1, (s) => s.uint32(18).string('10.0.0.2')));
          peer.uint32(42).string('old-certificate');
          peer.uint32(42).string('last-certificate');
        });
        entry(a, 10, 'route', 'bar');
        entry(a, 10, 'route', 'baz');
        field(a, 4, (r) => {
          field(r, 2, (h) => entry(h, 3, 'traceparent', 'gone'));
          field(r, 2, (h) => {
            entry(h, 3, 'authorization', 'one');
            entry(h, 3, 'authorization', 'two');
            field(h, 13, (m) => field(m, 1, (v) => v.uint32(10).string('otoroshi-client-id').uint32(18).string('lost')));
            field(h, 13, (m) => {
              field(m, 1, (v) => v.uint32(10).string('Authorization').uint32(18).string('a'));
              field(m, 1, (v) => v.uint32(10).string('authorization').uint32(26).bytes(Buffer.from('b')));
            });
          });
        });
      });
    });
    const request = assertSame(bytes, 'repeats');
    assert.equal(request.policy, 'baz');
    assert.equal(request.sourceAddress, '10.0.0.2');
    assert.equal(request.clientCertificate, 'last-certificate');
    assert.equal(request.headers.authorization, 'a,b');
    assert.equal(request.headers['otoroshi-client-id'], undefined);
  });

  it('skips unknown fields of every wire type, and groups', () => {
    const bytes = wire((w) => {
      w.uint32((99 << 3) | 0).uint64(2 ** 40);
      w.uint32((98 << 3) | 1).fixed64(7);
      w.uint32((97 << 3) | 5).fixed32(7);
      w.uint32((96 << 3) | 2).bytes(Buffer.from('junk'));
      w.uint32((95 << 3) | 3);
      w.uint32((94 << 3) | 0).uint32(1);
      w.uint32((93 << 3) | 3).uint32((93 << 3) | 4);
      w.uint32((95 << 3) | 4);
      field(w, 1, (a) => {
        a.uint32((50 << 3) | 0).uint32(1);
        entry(a, 10, 'route', 'foo');
        field(a, 4, (r) => {
          r.uint32((60 << 3) | 5).fixed32(1);
          field(r, 2, (h) => {
            h.uint32((70 << 3) | 2).bytes(Buffer.from('unknown'));
            entry(h, 3, 'authorization', 'ok');
          });
        });
      });
    });
    const request = assertSame(bytes, 'unknown fields');
    assert.equal(request.headers.authorization, 'ok');
    assert.equal(request.policy, 'foo');
  });

  it('reads an empty message and one without attributes as no policy, no headers', () => {
    for (const bytes of [Buffer.alloc(0), encodeRequest({}), encodeRequest({ attributes: {} })]) {
      const request = assertSame(bytes, 'empty');
      assert.equal(request.policy, undefined);
      assert.deepEqual(
        Object.values(request.headers).filter((value) => value !== undefined),
        [],
      );
    }
  });

  it('reads a huge request (1 MB of headers) and only what it needs of it', () => {
    const many: [string, string][] = [];
    for (let i = 0; i < 2000; i++) many.push([`x-filler-${i}`, 'v'.repeat(480)]);
    many.push(['authorization', `Bearer ${TOKEN}`]);
    for (const raw of [false, true]) {
      const bytes = encodeRequest(envoyRequest({ raw, headers: many }));
      assert.ok(bytes.length > 1_000_000);
      assert.equal(assertSame(bytes, `huge, raw=${raw}`).headers.authorization, `Bearer ${TOKEN}`);
    }
  });

  it('refuses every truncation of a real request, without a crash, as the full decoding does', () => {
    for (const raw of [false, true]) {
      const bytes = encodeRequest(envoyRequest({ raw, headers: [['authorization', `Bearer ${TOKEN}`]] }));
      for (let length = 1; length < bytes.length; length++) {
        const cut = bytes.subarray(0, length);
        const expected = reference(cut);
        const actual = ours(cut);
        if (!(expected instanceof Error)) assert.deepEqual(view(actual as AuthzRequest), view(expected), `cut at ${length}`);
        else assert.ok(actual instanceof Error, `cut at ${length}: accepted what the full decoding refuses`);
      }
    }
  });

  it('refuses malformed bytes with MalformedCheckRequest or RangeError, never anything else', () => {
    const malformed = [
      Buffer.from([0x0a, 0x80]), // a length varint cut short
      Buffer.from([0x0a, 0x05, 0x01]), // a length past the end
      Buffer.from([0x08, 0x01]), // attributes as a varint
      Buffer.from([0x0f]), // wire type 7
      Buffer.from([0x0c]), // an end group without a start
      Buffer.from([0x13]), // a group never closed
      Buffer.alloc(200, 0x13), // groups nested deep
      Buffer.from([0x0a, 0x02, 0x52, 0x05]), // a map entry past its message
      Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), // a tag varint too long
    ];
    for (const bytes of malformed) assert.ok(ours(bytes) instanceof Error, bytes.toString('hex'));
  });

  it('matches a configured non-ASCII header name as the full path does (compared as strings)', () => {
    const odd = new CheckRequestDecoder(['authorization', 'x-ünï']);
    for (const raw of [false, true]) {
      const bytes = encodeRequest(
        envoyRequest({
          raw,
          headers: [
            ['x-ünï', 'one'],
            ['X-ÜNÏ', 'two'],
            ['authorization', 'a'],
          ],
        }),
      );
      const expected = reference(bytes) as AuthzRequest;
      const actual = odd.decode(bytes);
      assert.equal(actual.headers['x-ünï'], expected.headers['x-ünï'], `raw=${raw}`);
      assert.equal(actual.headers.authorization, 'a');
    }
  });

  it('agrees on 2,000 random requests built from the proto, and survives their random mutations', () => {
    let seed = 0x5eed;
    const random = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    const pick = <T>(items: readonly T[]) => items[Math.floor(random() * items.length)];
    const names = [...WANTED, 'Authorization', 'TRACEPARENT', 'X-Api-Key', 'host', ':path', 'cookie', '', 'ü-header', 'authorization '];
    const values = ['', 'Bearer abc', `Bearer ${TOKEN}`, 'Basic YXBwOnNlY3JldA==', 'ünï', '😀', 'a,b', ' spaced ', 'x'.repeat(300)];
    const bytesValue = () =>
      random() < 0.3
        ? Buffer.from(Array.from({ length: Math.floor(random() * 12) }, () => Math.floor(random() * 256)))
        : Buffer.from(pick(values));
    const address = () => ({
      socket_address: { address: pick(['127.0.0.1', '::1', '10.1.2.3', '']), port_value: Math.floor(random() * 65536) },
    });
    for (let i = 0; i < 2000; i++) {
      const http: Record<string, unknown> = {};
      if (random() < 0.7)
        http.headers = Object.fromEntries(Array.from({ length: Math.floor(random() * 6) }, () => [pick(names), pick(values)]));
      if (random() < 0.5)
        http.header_map = {
          headers: Array.from({ length: Math.floor(random() * 6) }, () => {
            const header: Record<string, unknown> = { key: pick(names) };
            if (random() < 0.6) header.raw_value = bytesValue();
            if (random() < 0.4) header.value = pick(values);
            return header;
          }),
        };
      if (random() < 0.5) http.path = pick(values);
      if (random() < 0.3) http.body = pick(values);
      const attributes: Record<string, unknown> = {};
      if (random() < 0.9) attributes.request = random() < 0.95 ? { http, time: { seconds: 5 } } : {};
      if (random() < 0.7)
        attributes.source =
          random() < 0.9 ? { address: address(), principal: 'p', ...(random() < 0.5 && { certificate: pick(values) }) } : {};
      if (random() < 0.5) attributes.destination = { address: address() };
      if (random() < 0.8)
        attributes.context_extensions = Object.fromEntries(
          Array.from({ length: Math.floor(random() * 3) + 1 }, () => [
            pick(['route', 'route', 'other', 'Route', 'policy', 'Policy']),
            pick(['foo', 'bar', '', 'ü', '{"extractors":["basic"]}']),
          ]),
        );
      if (random() < 0.3) attributes.tls_session = { sni: 'x' };
      const bytes = encodeRequest(random() < 0.97 ? { attributes } : {});
      assertSame(bytes, `random request ${i}`);
      // A mutation: a byte changed, or a cut; either may make it malformed. No crash, no other error; equal where both read it.
      const mutated = Buffer.from(random() < 0.5 ? bytes : bytes.subarray(0, Math.floor(random() * bytes.length)));
      if (mutated.length && random() < 0.5) mutated[Math.floor(random() * mutated.length)] = Math.floor(random() * 256);
      const actual = ours(mutated);
      const expected = reference(mutated);
      // Only when the mutation kept every field's wire type: the full decoding reads a known field
      // whatever its wire type (and then misreads what follows), this decoder refuses it.
      if (!(actual instanceof Error) && !(expected instanceof Error) && mutated.equals(bytes))
        assert.deepEqual(view(actual), view(expected), `mutation ${i}`);
    }
  });
});

describe('CheckResponseEncoder against proto-loader', () => {
  const reasons = Object.keys(DENIALS) as DenyReason[];
  const allows: Allow[] = [
    {
      allowed: true,
      clientId: 'app',
      headersToSet: { 'x-otoroshi-client-id': 'app', 'x-otoroshi-client-name': 'My app', 'x-otoroshi-scopes': 'read write' },
      headersToRemove: [],
      responseHeaders: {},
    },
    {
      allowed: true,
      clientId: 'app',
      headersToSet: { 'x-otoroshi-client-id': 'app', 'x-otoroshi-client-name': '%C3%BC' },
      headersToRemove: ['x-otoroshi-scopes', 'authorization'],
      responseHeaders: { 'Otoroshi-Daily-Calls-Remaining': '99', 'Otoroshi-Monthly-Calls-Remaining': '999' },
    },
    { allowed: true, clientId: '', headersToSet: {}, headersToRemove: [], responseHeaders: {} },
    // Lengths past one varint byte (a header of 300 bytes, an answer of 20 KB), and multi-byte UTF-8.
    {
      allowed: true,
      clientId: 'long',
      headersToSet: { 'x-client-id': 'l'.repeat(300), 'x-client-name': 'ü€😀'.repeat(40) },
      headersToRemove: Array.from({ length: 200 }, (_, index) => `x-remove-${index}-${'r'.repeat(index)}`),
      responseHeaders: { 'Otoroshi-Daily-Calls-Remaining': '0' },
    },
  ];
  const denials: Decision[] = reasons.flatMap((reason) => [
    deny(reason),
    deny(reason, 'Bearer realm="foo", error="invalid_token"'),
    deny(reason, undefined, 7),
    deny(reason, 'Basic realm="fö"', 0),
  ]);

  it('writes the same bytes as proto-loader for allows and every denial', () => {
    for (const decision of [...allows, ...denials]) {
      const expected = CHECK.responseSerialize(toCheckResponse(decision));
      const actual = decision.allowed ? encodeAllow(decision) : encodeDeny(decision);
      assert.ok(Buffer.isBuffer(actual));
      assert.equal(actual.toString('hex'), expected.toString('hex'), JSON.stringify(decision));
      assert.deepEqual(CHECK.responseDeserialize(actual), CHECK.responseDeserialize(expected));
    }
  });

  it('reuses the bytes of a denial it has seen, and tells denials apart', () => {
    const encoder = new CheckResponseEncoder();
    const first = encoder.encode(deny('no_credential', 'Bearer realm="foo"'));
    assert.equal(encoder.encode(deny('no_credential', 'Bearer realm="foo"')), first);
    assert.notEqual(encoder.encode(deny('no_credential', 'Bearer realm="bar"')).toString('hex'), first.toString('hex'));
    for (const decision of denials)
      assert.equal(encoder.encode(decision).toString('hex'), CHECK.responseSerialize(toCheckResponse(decision)).toString('hex'));
    for (const decision of allows)
      assert.equal(encoder.encode(decision).toString('hex'), CHECK.responseSerialize(toCheckResponse(decision)).toString('hex'));
  });

  it('keeps the bytes of a shared (frozen) allow, and writes every other allow afresh', () => {
    const encoder = new CheckResponseEncoder();
    for (const decision of allows) {
      const fresh = encoder.encode(decision);
      assert.notEqual(encoder.encode(decision), fresh, 'not frozen: written again');
      const shared = Object.freeze({ ...decision });
      const bytes = encoder.encode(shared);
      assert.equal(encoder.encode(shared), bytes, 'frozen: the same bytes');
      assert.equal(bytes.toString('hex'), CHECK.responseSerialize(toCheckResponse(decision)).toString('hex'));
      // Shared identity headers and removals, this call's remaining calls (quotas): the same bytes.
      const parts = {
        headersToSet: Object.freeze({ ...decision.headersToSet }),
        headersToRemove: Object.freeze([...decision.headersToRemove]),
      };
      for (const responseHeaders of [{}, decision.responseHeaders, { 'Otoroshi-Daily-Calls-Remaining': '9'.repeat(200) }]) {
        const counted = { ...decision, ...parts, headersToRemove: parts.headersToRemove as string[], responseHeaders };
        assert.equal(
          encoder.encode(counted).toString('hex'),
          CHECK.responseSerialize(toCheckResponse(counted)).toString('hex'),
          JSON.stringify(counted),
        );
      }
    }
  });
});
