import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { authenticateClient, ClientAuthError, extractClientCredentials } from '../../libs/core/client-auth';
import { hashSecret } from '../../libs/core/crypto/secret-hash';
import type { ApiKeyRecord } from '../../libs/core/model';
import { normalizeParams } from '../../libs/core/params';
import type { ApiKeyRepository } from '../../libs/core/store/repositories';
import { apiKeyRecord } from '../support/records';

/* The authority's client authentication (libs/core/client-auth.ts): where credentials are read from, and how they are judged. */

const basic = (raw: string) => `Basic ${Buffer.from(raw, 'utf8').toString('base64')}`;

/** How a call to `fn` fails: the OAuth2 code and the reason kept for metrics, or 'ok'. */
async function failure(fn: () => unknown): Promise<string> {
  try {
    await fn();
    return 'ok';
  } catch (error) {
    if (error instanceof ClientAuthError) return `${error.code}/${error.reason}`;
    if (error instanceof Error && 'code' in error) return String((error as { code: unknown }).code);
    throw error;
  }
}

describe('extractClientCredentials', () => {
  it('reads HTTP Basic, form-decoded (RFC 6749 §2.3.1), with any case of the scheme', () => {
    assert.deepEqual(extractClientCredentials(basic('my-id:my-secret'), {}), {
      clientId: 'my-id',
      clientSecret: 'my-secret',
      method: 'client_secret_basic',
    });
    assert.deepEqual(extractClientCredentials(basic('my%3Aid:a+b%2Bc'), {}), {
      clientId: 'my:id',
      clientSecret: 'a b+c',
      method: 'client_secret_basic',
    });
    assert.equal(extractClientCredentials(`bAsIc ${Buffer.from('a:b').toString('base64')}`, {})?.clientId, 'a');
    assert.deepEqual(extractClientCredentials(basic('id:'), {}), { clientId: 'id', clientSecret: '', method: 'client_secret_basic' });
    assert.equal(extractClientCredentials(basic('id:se:cret'), {})?.clientSecret, 'se:cret', 'the first colon splits');
  });

  it('refuses broken Basic with invalid_request: no colon, not base64, bad percent-encoding', async () => {
    for (const header of [basic('no-colon'), 'Basic !!!!', 'Basic ', basic('id:%E0%A4%A')]) {
      assert.equal(await failure(() => extractClientCredentials(header, {})), 'invalid_request/malformed', header);
    }
  });

  it('reads the body (client_secret_post) only without Basic; another scheme is not Basic', () => {
    const params = normalizeParams({ client_id: 'my-id', client_secret: 'my-secret' });
    assert.deepEqual(extractClientCredentials(undefined, params), {
      clientId: 'my-id',
      clientSecret: 'my-secret',
      method: 'client_secret_post',
    });
    assert.deepEqual(extractClientCredentials('Bearer x', params), {
      clientId: 'my-id',
      clientSecret: 'my-secret',
      method: 'client_secret_post',
    });
    assert.deepEqual(extractClientCredentials(undefined, { client_id: 'only-id' }), {
      clientId: 'only-id',
      clientSecret: '',
      method: 'client_secret_post',
    });
    assert.equal(extractClientCredentials(undefined, {}), undefined);
    assert.equal(extractClientCredentials(undefined, { scope: 'read' }), undefined);
  });

  it('refuses two methods at once, but tolerates a client_id equal to the Basic id', async () => {
    assert.equal(await failure(() => extractClientCredentials(basic('a:b'), { client_secret: 'b' })), 'invalid_request/multiple_methods');
    assert.equal(await failure(() => extractClientCredentials(basic('a:b'), { client_id: 'other' })), 'invalid_request/multiple_methods');
    assert.equal(extractClientCredentials(basic('a:b'), { client_id: 'a' })?.method, 'client_secret_basic');
  });
});

describe('authenticateClient', () => {
  const NOW = Date.UTC(2026, 5, 1);
  const LONG = 'L'.repeat(43);
  /** Only `get` is used; the store itself is tested in the end-to-end tier. */
  function repository(records: ApiKeyRecord[]): ApiKeyRepository {
    const byId = new Map(records.map((record) => [record.clientId, record]));
    return { get: async (clientId: string) => byId.get(clientId) } as unknown as ApiKeyRepository;
  }

  it('accepts the right secret on either scheme and answers one invalid_client for everything else', async () => {
    const keys = repository([
      apiKeyRecord('fast', { secretHash: await hashSecret(LONG) }),
      apiKeyRecord('short', { secretHash: await hashSecret('tiny-secret') }),
      apiKeyRecord('off', { secretHash: await hashSecret(LONG), enabled: false }),
      apiKeyRecord('old', { secretHash: await hashSecret(LONG), validUntil: NOW }),
    ]);
    const post = (clientId: string, clientSecret: string) => ({ clientId, clientSecret, method: 'client_secret_post' as const });
    assert.equal((await authenticateClient(keys, post('fast', LONG), NOW)).clientId, 'fast');
    assert.equal((await authenticateClient(keys, post('short', 'tiny-secret'), NOW)).clientId, 'short');
    assert.equal(await failure(() => authenticateClient(keys, post('fast', `${LONG}x`), NOW)), 'invalid_client/invalid_secret');
    assert.equal(await failure(() => authenticateClient(keys, post('fast', LONG.slice(1)), NOW)), 'invalid_client/invalid_secret');
    assert.equal(await failure(() => authenticateClient(keys, post('short', 'tiny-secreT'), NOW)), 'invalid_client/invalid_secret');
    assert.equal(await failure(() => authenticateClient(keys, post('ghost', LONG), NOW)), 'invalid_client/unknown_client');
    assert.equal(await failure(() => authenticateClient(keys, post('', ''), NOW)), 'invalid_client/unknown_client');
    assert.equal(await failure(() => authenticateClient(keys, post('off', LONG), NOW)), 'invalid_client/disabled');
    assert.equal(await failure(() => authenticateClient(keys, post('old', LONG), NOW)), 'invalid_client/expired');
    assert.equal((await authenticateClient(keys, post('old', LONG), NOW - 1)).clientId, 'old', 'usable until validUntil');
    assert.equal(
      await failure(() => authenticateClient(keys, post('off', 'wrong'), NOW)),
      'invalid_client/invalid_secret',
      'the state only after the secret',
    );
    assert.equal(await failure(() => authenticateClient(keys, undefined, NOW)), 'invalid_client/no_credentials');
  });

  it('challenges with WWW-Authenticate: Basic only after Basic', async () => {
    const keys = repository([]);
    const viaBasic = await authenticateClient(keys, { clientId: 'x', clientSecret: LONG, method: 'client_secret_basic' }, NOW).catch(
      (e) => e,
    );
    const viaPost = await authenticateClient(keys, { clientId: 'x', clientSecret: LONG, method: 'client_secret_post' }, NOW).catch(
      (e) => e,
    );
    assert.match(viaBasic.wwwAuthenticate, /^Basic realm=/);
    assert.equal(viaBasic.status, 401);
    assert.equal(viaPost.wwwAuthenticate, undefined);
  });

  it('accepts the previous secret during its grace period only', async () => {
    const next = 'N'.repeat(43);
    const keys = repository([
      apiKeyRecord('rotating', {
        secretHash: await hashSecret(next),
        previousSecretHash: await hashSecret(LONG),
        previousSecretValidUntil: NOW + 1000,
      }),
    ]);
    const post = (clientSecret: string) => ({ clientId: 'rotating', clientSecret, method: 'client_secret_post' as const });
    assert.equal((await authenticateClient(keys, post(LONG), NOW)).clientId, 'rotating');
    assert.equal((await authenticateClient(keys, post(next), NOW + 1000)).clientId, 'rotating');
    assert.equal(await failure(() => authenticateClient(keys, post(LONG), NOW + 1000)), 'invalid_client/invalid_secret');
  });
});
