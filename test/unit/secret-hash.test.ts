import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, describe, it } from 'node:test';
import { hashSecret, verifySecret } from '../../libs/core/crypto/secret-hash';

/*
 * No client id enumeration by timing (RFC 6749 §10.10's spirit): the work verifySecret does
 * depends on the presented secret only, never on whether the id exists or what its stored hash
 * is. Checked by counting the hashing calls, not by a clock, so it cannot flake under load.
 */
describe('verifySecret: the same work for an unknown id and a wrong secret', () => {
  const calls: string[] = [];
  const { scrypt, createHash } = crypto;
  // The compiled module calls node:crypto's functions through the module object, at call time.
  (crypto as { scrypt: unknown }).scrypt = (...args: Parameters<typeof scrypt>) => {
    const options = args[3] as { N: number; r: number; p: number };
    calls.push(`scrypt N=${options.N} r=${options.r} p=${options.p}`);
    return (scrypt as (...rest: unknown[]) => void)(...args);
  };
  (crypto as { createHash: unknown }).createHash = (algorithm: string, ...rest: unknown[]) => {
    calls.push(`hash ${algorithm}`);
    return (createHash as (...all: unknown[]) => crypto.Hash)(algorithm, ...rest);
  };
  after(() => Object.assign(crypto, { scrypt, createHash }));

  const workOf = async (presented: string, stored: readonly string[]) => {
    calls.length = 0;
    const matched = await verifySecret(presented, stored);
    return { matched, work: [...calls] };
  };

  it('a short guess: one scrypt of the same cost for an unknown id, a key with a short secret, and a key with a long one', async () => {
    const short = await hashSecret('app-secret');
    const long = await hashSecret('l'.repeat(40));
    const unknown = await workOf('short-guess', []);
    assert.deepEqual(unknown, { matched: false, work: ['scrypt N=32768 r=8 p=1'] });
    assert.deepEqual(await workOf('short-guess', [short]), unknown);
    assert.deepEqual(await workOf('short-guess', [long]), unknown);
  });

  it('a long guess: one SHA-256 and no scrypt, whatever the id has', async () => {
    const short = await hashSecret('app-secret');
    const long = await hashSecret('l'.repeat(40));
    const guess = 'a-long-guess-of-more-than-32-characters-000';
    const unknown = await workOf(guess, []);
    assert.deepEqual(unknown, { matched: false, work: ['hash sha256'] });
    assert.deepEqual(await workOf(guess, [short]), unknown);
    assert.deepEqual(await workOf(guess, [long]), unknown);
    assert.deepEqual(await workOf('l'.repeat(40), [long]), { matched: true, work: ['hash sha256'] });
  });
});
