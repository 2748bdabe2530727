import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AsyncReadMemo } from '../../libs/core/store/postgres-store';

/*
 * The PostgreSQL store's read cache (AsyncReadMemo): a getMany whose load is in flight while a
 * change notice drops a cached key, or the size bound clears the memory, still answers every key.
 * routes-store.test.ts once got undefined for an existing route that way (a NOTIFY mid-load).
 */

describe('AsyncReadMemo.getMany', () => {
  it('answers a cached key that a change notice forgets while the others load', async () => {
    const memo = new AsyncReadMemo(100);
    assert.equal(await memo.get('foo', async () => 'FOO'), 'FOO');
    const values = await memo.getMany(['baz', 'foo'], async (missing) => {
      assert.deepEqual(missing, ['baz']);
      memo.forget('foo'); // what a NOTIFY about another key's change does meanwhile
      return missing.map((key) => key.toUpperCase());
    });
    assert.deepEqual(values, ['BAZ', 'FOO']);
  });

  it('answers a cached key when the size bound clears the memory at the end of the load', async () => {
    const memo = new AsyncReadMemo(2);
    await memo.get('a', async () => 'A');
    const values = await memo.getMany(['a', 'b', 'c'], async (missing) => missing.map((key) => key.toUpperCase()));
    assert.deepEqual(values, ['A', 'B', 'C']);
  });

  it('keeps nothing loaded before an invalidation, and loads it again afterwards', async () => {
    const memo = new AsyncReadMemo(100);
    let loads = 0;
    const load = async (missing: string[]) => {
      loads += 1;
      if (loads === 1) memo.clear();
      return missing.map((key) => `${key}${loads}`);
    };
    assert.deepEqual(await memo.getMany(['x'], load), ['x1']);
    assert.deepEqual(await memo.getMany(['x'], load), ['x2']);
    assert.deepEqual(await memo.getMany(['x'], load), ['x2']);
  });
});
