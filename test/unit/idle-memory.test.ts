import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type ExposedGc, IdleMemoryRelease } from '../../services/ext-authz/idle-memory';

/*
 * ext-authz's release of V8's pooled pages once a load stops (services/ext-authz/idle-memory.ts):
 * only when the event loop was idle, RSS grew since the last release and the last one is not
 * recent; never without gc(); never under load.
 */

const MB = 1024 * 1024;

function harness(options: { gc?: boolean } = {}) {
  const state = { utilization: 0, rss: 200 * MB, now: 1_000_000, calls: [] as unknown[] };
  const gc: ExposedGc = async (gcOptions) => {
    state.calls.push(gcOptions);
    state.rss = 120 * MB; // what the pool held goes back to the system
  };
  const release = new IdleMemoryRelease({
    gc: options.gc === false ? undefined : gc,
    utilization: () => state.utilization,
    rss: () => state.rss,
    now: () => state.now,
  });
  return { state, release };
}

describe('IdleMemoryRelease', () => {
  it('runs one last-resort collection when idle, then none until RSS has grown and 30 s have passed', async () => {
    const { state, release } = harness();
    assert.equal(await release.tick(), true);
    assert.deepEqual(state.calls, [{ type: 'major', execution: 'async', flavor: 'last-resort' }]);
    assert.equal(await release.tick(), false, 'nothing grew');
    state.rss = 200 * MB;
    state.now += 10_000;
    assert.equal(await release.tick(), false, 'grown, but the last release is 10 s old');
    state.now += 20_000;
    assert.equal(await release.tick(), true);
    state.rss = 130 * MB;
    state.now += 60_000;
    assert.equal(await release.tick(), false, 'grown by less than 16 MB');
    assert.equal(release.releases, 2);
  });

  it('does nothing while the event loop is busy (a load is running)', async () => {
    const { state, release } = harness();
    for (const utilization of [0.4, 0.03, 0.01]) {
      state.utilization = utilization; // 0.03: a request every 5 ms, as bench/data-plane-scale.ts polls
      assert.equal(await release.tick(), false);
    }
    assert.equal(state.calls.length, 0);
    state.utilization = 0.002;
    assert.equal(await release.tick(), true);
  });

  it('does nothing without gc() (a process started without --expose-gc)', async () => {
    const { state, release } = harness({ gc: false });
    assert.equal(release.enabled, false);
    assert.equal(await release.tick(), false);
    assert.equal(state.calls.length, 0);
    release.start().stop();
  });

  it('runs one collection at a time', async () => {
    let finish: () => void = () => undefined;
    let calls = 0;
    const release = new IdleMemoryRelease({
      gc: () => {
        calls += 1;
        return new Promise<void>((done) => (finish = done));
      },
      utilization: () => 0,
      rss: () => 500 * MB,
      minSpacingMs: 0,
    });
    const first = release.tick();
    assert.equal(await release.tick(), false);
    finish();
    assert.equal(await first, true);
    assert.equal(calls, 1);
  });
});
