import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { authorityConfigSchema } from '../../libs/core/config';
import { extAuthzConfigSchema } from '../../libs/authz/config';
import { clientAddressOf, describeTrustProxy, parseTrustProxy, proxiedClientAddress, type TrustProxy } from '../../libs/http/trust-proxy';

describe('TRUST_PROXY forms (issue 22)', () => {
  it('reads "trust nothing", hop counts and address lists', () => {
    const cases: [unknown, TrustProxy][] = [
      [false, false],
      [0, false],
      ['false', false],
      ['0', false],
      [' off ', false],
      [1, { hops: 1 }],
      ['1', { hops: 1 }],
      ['10', { hops: 10 }],
      ['127.0.0.1', { addresses: ['127.0.0.1'] }],
      ['10.0.0.5, 10.1.0.0/16,fd00::/8', { addresses: ['10.0.0.5', '10.1.0.0/16', 'fd00::/8'] }],
      [['::1', '192.168.0.0/255.255.0.0'], { addresses: ['::1', '192.168.0.0/255.255.0.0'] }],
      ['loopback,uniquelocal', { addresses: ['loopback', 'uniquelocal'] }],
    ];
    for (const [value, expected] of cases) assert.deepEqual(parseTrustProxy(value), expected, JSON.stringify(value));
  });

  it('refuses "trust every hop" and anything else, naming the accepted forms', () => {
    for (const value of [
      true,
      'true',
      'TRUE',
      'yes',
      '*',
      'all',
      11,
      '11',
      -1,
      1.5,
      '',
      ' , ',
      '10.0.0.300',
      '10.0.0.0/33',
      'proxy.example',
      'fd00::/129',
      {},
      [1],
    ]) {
      assert.throws(
        () => parseTrustProxy(value),
        (error: Error) => /a hop count 1-10/.test(error.message),
        JSON.stringify(value),
      );
    }
    assert.throws(() => parseTrustProxy('true'), /"true" \(trust every hop\) is refused/);
  });

  it('refuses IPv4 entries that are not dotted quads (which would match addresses such as 0.0.0.1), naming the entry and the forms', () => {
    for (const [value, entry] of [
      ['1,2', '1'],
      ['0,1', '0'],
      ['0x1', '0x1'],
      ['10.0.0.5,7', '7'],
      ['10.1', '10.1'],
      ['10.0.0.010', '10.0.0.010'],
      ['0x0a.0.0.1', '0x0a.0.0.1'],
      ['1/8', '1/8'],
      ['10.1/16', '10.1/16'],
      [['10.0.0.5', '3'], '3'],
    ] as const) {
      assert.throws(
        () => parseTrustProxy(value),
        (error: Error) =>
          error.message.includes(`"${entry}"`) && /dotted-quad/.test(error.message) && /a hop count 1-10/.test(error.message),
        JSON.stringify(value),
      );
    }
    // Dotted quads, with a prefix length or a netmask, IPv6 (IPv4-mapped too) and the names still pass.
    assert.deepEqual(parseTrustProxy('10.0.0.0/8,10.0.0.5,192.168.0.0/255.255.0.0,::ffff:10.0.0.1,linklocal'), {
      addresses: ['10.0.0.0/8', '10.0.0.5', '192.168.0.0/255.255.0.0', '::ffff:10.0.0.1', 'linklocal'],
    });
  });

  it('is checked when the configuration is read: a bare true fails validation; unset is false', () => {
    const base = { dataDir: '/tmp/unused' };
    assert.equal(authorityConfigSchema.parse(base).trustProxy, false);
    assert.deepEqual(authorityConfigSchema.parse({ ...base, trustProxy: '1' }).trustProxy, { hops: 1 });
    const refused = authorityConfigSchema.safeParse({ ...base, trustProxy: 'true' });
    assert.equal(refused.success, false);
    assert.match(JSON.stringify(refused.error?.issues), /trust every hop/);
  });

  it('takes the address the trusted hop saw, never one the client wrote', () => {
    // Envoy (use_remote_address, xff_num_trusted_hops 0) appends the real peer after whatever the client sent.
    const spoofed = '10.9.8.7, 203.0.113.9';
    assert.equal(clientAddressOf(false, '127.0.0.1', spoofed), '127.0.0.1');
    assert.equal(clientAddressOf({ hops: 1 }, '127.0.0.1', spoofed), '203.0.113.9');
    assert.equal(clientAddressOf({ hops: 2 }, '127.0.0.1', spoofed), '10.9.8.7');
    assert.equal(clientAddressOf({ hops: 1 }, '127.0.0.1'), '127.0.0.1', 'no header: the peer');
    assert.equal(clientAddressOf({ hops: 1 }, '127.0.0.1', ['1.1.1.1', '203.0.113.9']), '203.0.113.9', 'repeated header');
    // A list: hops are believed while they are listed proxies.
    assert.equal(clientAddressOf({ addresses: ['10.0.0.0/8'] }, '10.0.0.5', spoofed), '203.0.113.9');
    assert.equal(clientAddressOf({ addresses: ['10.0.0.0/8'] }, '192.0.2.1', spoofed), '192.0.2.1', 'peer not a listed proxy');
    assert.equal(clientAddressOf({ addresses: ['fd00::/8'] }, 'fd00::1', '2001:db8::1'), '2001:db8::1');
    // The pitfall the docs name: a client at a listed address gets its own header believed.
    assert.equal(clientAddressOf({ addresses: ['127.0.0.1'] }, '127.0.0.1', '10.9.8.7, 127.0.0.1'), '10.9.8.7');
  });

  it("ext-authz's HTTP mode: X-Real-IP is the trusted hop's word, believed only from a trusted peer", () => {
    // nginx auth_request (the shipped template): X-Real-IP $remote_addr; the client's own X-Forwarded-For passes through.
    const nginx = { realIp: '203.0.113.9', forwardedFor: '10.9.8.7' };
    assert.equal(proxiedClientAddress({ hops: 1 }, '127.0.0.1', nginx), '203.0.113.9');
    assert.equal(proxiedClientAddress({ addresses: ['loopback'] }, '127.0.0.1', nginx), '203.0.113.9');
    // Envoy HTTP mode: no X-Real-IP, the last X-Forwarded-For entry is the one Envoy appended.
    assert.equal(proxiedClientAddress({ hops: 1 }, '127.0.0.1', { forwardedFor: '10.9.8.7, 203.0.113.9' }), '203.0.113.9');
    // A peer that is no trusted proxy writes what it likes, and none of it is believed.
    assert.equal(proxiedClientAddress(false, '192.0.2.1', nginx), '192.0.2.1');
    assert.equal(proxiedClientAddress({ addresses: ['10.0.0.5'] }, '192.0.2.1', nginx), '192.0.2.1');
    assert.equal(proxiedClientAddress({ addresses: ['10.0.0.5'] }, '10.0.0.5', nginx), '203.0.113.9');
    // Two hops (a balancer that appends X-Forwarded-For, then nginx): X-Real-IP is the balancer, the entry before it the client.
    assert.equal(
      proxiedClientAddress({ hops: 2 }, '127.0.0.1', { realIp: '10.0.0.2', forwardedFor: '10.9.8.7, 203.0.113.9' }),
      '203.0.113.9',
    );
    // A hop that sets X-Real-IP and appends the same address to X-Forwarded-For counts once.
    assert.equal(
      proxiedClientAddress({ hops: 2 }, '127.0.0.1', { realIp: '10.0.0.2', forwardedFor: '203.0.113.9, 10.0.0.2' }),
      '203.0.113.9',
    );
    assert.equal(proxiedClientAddress({ hops: 1 }, '127.0.0.1', {}), '127.0.0.1', 'no header: the peer');
    assert.equal(proxiedClientAddress({ hops: 1 }, '127.0.0.1', { realIp: ' ' }), '127.0.0.1', 'an empty X-Real-IP: the peer');
  });

  it('ext-authz reads TRUST_PROXY too, by default 1 (its HTTP mode sits behind nginx or Envoy); a bare true is refused', () => {
    assert.deepEqual(extAuthzConfigSchema.parse({}).trustProxy, { hops: 1 });
    assert.equal(extAuthzConfigSchema.parse({ trustProxy: 'false' }).trustProxy, false);
    assert.deepEqual(extAuthzConfigSchema.parse({ trustProxy: '10.0.0.5' }).trustProxy, { addresses: ['10.0.0.5'] });
    assert.equal(extAuthzConfigSchema.safeParse({ trustProxy: 'true' }).success, false);
  });

  it('writes the setting back as TRUST_PROXY would be written', () => {
    assert.equal(describeTrustProxy(false), 'false');
    assert.equal(describeTrustProxy({ hops: 1 }), '1');
    assert.equal(describeTrustProxy({ addresses: ['10.0.0.5', 'fd00::/8'] }), '10.0.0.5,fd00::/8');
  });
});
