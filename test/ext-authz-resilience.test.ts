import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { getServers, promises as dnsPromises, setServers } from 'node:dns';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ADMIN_TOKEN, startTestAuthority, TOKEN_PATH, type TestAuthority } from './support/authority';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { httpRequest } from './support/http';
import { freePort } from './support/ports';

/** The data plane keeps deciding while the authority is away, and catches up when it is back. */
describe('ext-authz without its authority', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'ext-authz-resilience-'));
  let authority: TestAuthority | undefined;
  let extAuthz: TestExtAuthz | undefined;
  after(async () => {
    await extAuthz?.close();
    await authority?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('answers from its last state, says it is degraded, reconnects when the authority is back', async () => {
    const grpcPort = await freePort();
    const settings = { grpc: { host: '127.0.0.1', port: grpcPort } };
    authority = await startTestAuthority(settings, dataDir);
    await authority.admin('POST', '/api/apikeys', {
      clientId: 'resilient',
      clientSecret: 'resilient-secret',
      authorizedEntities: ['route_foo'],
    });
    const { access_token: token } = (await (
      await authority.postForm(TOKEN_PATH, { grant_type: 'client_credentials', client_id: 'resilient', client_secret: 'resilient-secret' })
    ).json()) as { access_token: string };
    extAuthz = await startTestExtAuthz(authority);
    await extAuthz.waitFor(() => extAuthz!.replica.apiKey('resilient') !== undefined);
    const check = (credential = token) =>
      httpRequest(`${extAuthz!.url}/authz/foo/`, { headers: { authorization: `Bearer ${credential}` } });
    const health = async () =>
      JSON.parse((await httpRequest(`${extAuthz!.url}/health`)).body) as { status: string; authority: { connected: boolean } };

    assert.equal((await check()).status, 200);
    assert.equal((await health()).status, 'ok');

    await authority.close();
    await extAuthz.waitFor(() => extAuthz!.replica.status === 'degraded');
    const degraded = await httpRequest(`${extAuthz.url}/health`);
    assert.equal(degraded.status, 200, 'still able to decide');
    assert.equal(JSON.parse(degraded.body).status, 'degraded');
    assert.equal(JSON.parse(degraded.body).authority.connected, false);
    assert.match((await httpRequest(`${extAuthz.url}/metrics`)).body, /ext_authz_authority_connected 0/);
    for (let round = 0; round < 20; round += 1) {
      assert.equal((await check()).status, 200, 'allowed from the snapshot');
      assert.equal((await check('not-a-token')).status, 401, 'denied from the snapshot');
    }

    // Back on the same port and store; a change made while ext-authz was away reaches it.
    authority = await startTestAuthority(settings, dataDir);
    await authority.admin('PATCH', '/api/apikeys/resilient', { enabled: false });
    const reconnectMs = await extAuthz.waitFor(
      () => extAuthz!.replica.status === 'synced' && extAuthz!.replica.apiKey('resilient')?.enabled === false,
      10_000,
    );
    assert.ok(reconnectMs < 10_000);
    assert.equal((await health()).status, 'ok');
    const denied = await check();
    assert.equal(denied.status, 401);
    assert.deepEqual(JSON.parse(denied.body), { 'Otoroshi-Error': 'ApiKey disabled' });
  });

  it('refuses to replicate without the data plane token', async () => {
    const open = await startTestAuthority();
    const intruder = await startTestExtAuthz(
      open,
      { authority: { url: open.grpcAddress, token: 'not-the-admin-token-at-all', initialBackoff: 50, maxBackoff: 200 } },
      false,
    );
    try {
      await new Promise((done) => setTimeout(done, 300));
      assert.equal(intruder.replica.ready, false);
      const answer = await httpRequest(`${intruder.url}/authz/foo/`, { headers: { authorization: 'Bearer x.y.z' } });
      assert.equal(answer.status, 503);
      assert.equal((await httpRequest(`${intruder.url}/health`)).status, 503);
    } finally {
      await intruder.close();
      await open.stop();
    }
  });

  it("asks DNS for nothing but the authority's addresses (no TXT service config lookup)", async () => {
    // A name server that records the questions and never answers, as Docker's embedded DNS does
    // for a name it forwards to an upstream that is unreachable: a TXT question waited there for
    // seconds, and `docker stop` of ext-authz waited for it (2 s instead of 0.1 s).
    const questions: { name: string; type: number }[] = [];
    const dns = createSocket('udp4');
    dns.on('message', (message) => {
      const labels: string[] = [];
      let offset = 12;
      while (offset < message.length && message[offset] !== 0) {
        labels.push(message.subarray(offset + 1, offset + 1 + message[offset]).toString('latin1'));
        offset += 1 + message[offset];
      }
      questions.push({ name: labels.join('.'), type: message.readUInt16BE(offset + 1) });
    });
    await new Promise<void>((done) => dns.bind(0, '127.0.0.1', done));
    // This process's resolver asks it (ext-authz runs in it here); addresses still come from the
    // system's getaddrinfo (/etc/hosts for localhost), as grpc-js looks them up.
    const servers = { callbacks: getServers(), promises: dnsPromises.getServers() };
    setServers([`127.0.0.1:${dns.address().port}`]);
    dnsPromises.setServers([`127.0.0.1:${dns.address().port}`]);
    const open = await startTestAuthority();
    const url = `localhost:${open.grpcAddress.split(':').pop()}`;
    const replica = await startTestExtAuthz(open, { authority: { url, token: ADMIN_TOKEN, initialBackoff: 50, maxBackoff: 200 } });
    try {
      assert.ok(replica.quotaCounters, 'the quota counters stream is open too (counters in memory)');
      await new Promise((done) => setTimeout(done, 300));
      assert.deepEqual(questions, []);
    } finally {
      await replica.close();
      await open.stop();
      setServers(servers.callbacks);
      dnsPromises.setServers(servers.promises);
      dns.close();
    }
  });
});

describe('ext-authz that cannot listen', () => {
  it('fails to start on a port already taken, leaving nothing running behind it (no server, watch or timer)', async () => {
    const { createServer } = await import('node:net');
    const blocker = createServer();
    await new Promise<void>((listening) => blocker.listen(0, '127.0.0.1', listening));
    const taken = (blocker.address() as { port: number }).port;
    const resources = () => {
      const counts: Record<string, number> = {};
      for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1;
      return counts;
    };
    const before = resources();
    try {
      for (const face of ['grpc', 'http'] as const)
        await assert.rejects(
          startTestExtAuthz({ grpcAddress: `127.0.0.1:${await freePort()}` }, { [face]: { host: '127.0.0.1', port: taken } }, false),
          /EADDRINUSE|No address added out of total/,
          face,
        );
      await new Promise((done) => setTimeout(done, 300));
      const left = resources();
      for (const name of ['TCPServerWrap', 'TCPSocketWrap', 'Timeout'])
        assert.ok((left[name] ?? 0) <= (before[name] ?? 0), `${name}: ${JSON.stringify(before)} -> ${JSON.stringify(left)}`);
    } finally {
      blocker.close();
    }
  });
});
