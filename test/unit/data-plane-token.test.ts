import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { authorityConfigSchema, BEARER_TOKEN_CHARACTERS } from '../../libs/core/config';
import { generateSecret } from '../../libs/core/crypto/secret-hash';

/*
 * The data plane token is written as it is into Envoy's xDS bootstrap (a YAML string, by
 * docker-compose's entrypoint) and into gRPC metadata: only a Bearer token's characters are taken.
 */
describe('the data plane token setting', () => {
  const parse = (dataPlaneToken: string) => authorityConfigSchema.safeParse({ dataPlaneToken });

  it('takes Bearer token characters (RFC 6750 b64token), generated tokens included', () => {
    for (const token of ['compose-test-data-plane-token-0123', 'abcDEF0123456789+/._~-==', generateSecret(), generateSecret()])
      assert.equal(parse(token).success, true, token);
  });

  it('refuses quotes, backslashes, spaces, newlines and non-ASCII, naming the rule', () => {
    for (const token of [
      'token-with-"quote"-inside',
      'token\\with\\backslashes',
      'token with spaces 0123',
      'token-line\nbreak-0123',
      'jeton-données-0123456',
      'padding==in-the-middle-0',
    ]) {
      const result = parse(token);
      assert.equal(result.success, false, JSON.stringify(token));
      assert.match(result.error!.issues.map((issue) => issue.message).join('; '), /Bearer token \(RFC 6750\)/);
    }
    assert.equal(BEARER_TOKEN_CHARACTERS.test(''), false);
  });
});
