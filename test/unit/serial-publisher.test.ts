import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import { SerialPublisher } from '../../libs/core/serial-publisher';

/*
 * The publish loop both change-log feeds share (DataPlaneFeed, RouteFeed): debounce, one run at a
 * time, a run again when asked during one or when a batch was full, backoff after a failure. On
 * node:test's mocked setTimeout (ticks are milliseconds of the mocked clock; nothing waits).
 */

/** Lets promise callbacks and setImmediate run (setImmediate is not mocked). */
const settle = () => new Promise<void>((done) => setImmediate(done));

describe('SerialPublisher', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }));
  afterEach(() => mock.timers.reset());

  const options = (onError: (error: Error) => void = () => assert.fail('no error expected')) => ({
    debounceMs: 10,
    retryFirstMs: 100,
    retryMaxMs: 400,
    onError,
  });

  it('runs once for a burst of changes, after the debounce', async () => {
    let runs = 0;
    const publisher = new SerialPublisher(async () => {
      runs++;
    }, options());
    for (let i = 0; i < 5; i++) publisher.schedule();
    mock.timers.tick(9);
    await settle();
    assert.equal(runs, 0);
    mock.timers.tick(1);
    await settle();
    assert.equal(runs, 1);
    publisher.schedule();
    mock.timers.tick(10);
    await settle();
    assert.equal(runs, 2);
    publisher.close();
  });

  it('never runs twice at once; asked during a run, runs once more after it', async () => {
    let active = 0;
    let most = 0;
    let runs = 0;
    const releases: (() => void)[] = [];
    const publisher = new SerialPublisher(async () => {
      runs++;
      active++;
      most = Math.max(most, active);
      await new Promise<void>((release) => releases.push(release));
      active--;
    }, options());
    const first = publisher.publish();
    await settle();
    assert.equal(runs, 1);
    // Three asks while the first run waits: one more run, not three, and not alongside.
    const asks = [publisher.publish(), publisher.publish(), publisher.publish()];
    assert.equal(asks[0], first, 'an ask during a run joins it');
    releases.shift()?.();
    await settle();
    assert.equal(runs, 2);
    releases.shift()?.();
    await first;
    assert.equal(runs, 2);
    assert.equal(most, 1);
    publisher.close();
  });

  it('runs again at once while a run says more follows (a full batch)', async () => {
    const batches = [true, true, false];
    let runs = 0;
    const publisher = new SerialPublisher(async () => {
      runs++;
      return batches.shift();
    }, options());
    await publisher.publish();
    assert.equal(runs, 3);
    publisher.close();
  });

  it('waits for ready before the first run', async () => {
    let ready!: () => void;
    let runs = 0;
    const publisher = new SerialPublisher(
      async () => {
        runs++;
      },
      { ...options(), ready: new Promise<void>((done) => (ready = done)) },
    );
    const run = publisher.publish();
    await settle();
    assert.equal(runs, 0);
    ready();
    await run;
    assert.equal(runs, 1);
    publisher.close();
  });

  it('retries a failed run with a doubling backoff up to the cap, and a success resets it', async () => {
    const errors: string[] = [];
    let failing = 4;
    let runs = 0;
    const publisher = new SerialPublisher(
      async () => {
        runs++;
        if (failing-- > 0) throw new Error(`busy ${runs}`);
      },
      options((error) => errors.push(error.message)),
    );
    await publisher.publish();
    assert.deepEqual(errors, ['busy 1']);
    // Retries after 100, 200, 400 (the cap), 400 ms.
    for (const [wait, expected] of [
      [100, 2],
      [200, 3],
      [400, 4],
      [400, 5],
    ]) {
      mock.timers.tick(wait - 1);
      await settle();
      assert.equal(runs, expected - 1, `not before ${wait} ms`);
      mock.timers.tick(1);
      await settle();
      assert.equal(runs, expected, `after ${wait} ms`);
    }
    assert.deepEqual(errors, ['busy 1', 'busy 2', 'busy 3', 'busy 4']);
    // Went through on the 5th: the next failure starts over at 100 ms.
    failing = 1;
    await publisher.publish();
    assert.equal(errors.length, 5);
    mock.timers.tick(100);
    await settle();
    assert.equal(runs, 7);
    assert.equal(errors.length, 5);
    publisher.close();
  });

  it('close stops the debounce and the retry timers', async () => {
    let runs = 0;
    const publisher = new SerialPublisher(
      async () => {
        runs++;
        throw new Error('down');
      },
      options(() => {}),
    );
    await publisher.publish();
    assert.equal(runs, 1);
    publisher.close();
    publisher.schedule();
    mock.timers.tick(10_000);
    await settle();
    assert.equal(runs, 1);
    await publisher.publish();
    assert.equal(runs, 1);
  });
});
