import { getHeapSpaceStatistics, setFlagsFromString, writeHeapSnapshot } from 'node:v8';
import { join } from 'node:path';
import { runInNewContext } from 'node:vm';

/**
 * Preloaded into a benchmarked service (`node --require dist/bench/memory-probe.js ...`, spawned
 * with an IPC channel): answers `{ memory: 'usage' }` with process.memoryUsage() and V8's heap
 * spaces, `{ memory: 'gc' }` after a full garbage collection, and `{ memory: 'snapshot', dir }`
 * with the path of a heap snapshot written there. Nothing happens without the benchmark asking.
 */
if (process.send) {
  const usage = () => ({
    ...process.memoryUsage(),
    spaces: Object.fromEntries(
      getHeapSpaceStatistics().map((space) => [space.space_name, { used: space.space_used_size, physical: space.physical_space_size }]),
    ),
  });
  process.on('message', (message: { memory?: string; dir?: string }) => {
    if (message?.memory === 'usage') process.send!({ memory: 'usage', ...usage() });
    else if (message?.memory === 'gc') {
      // gc() without starting the service with --expose-gc: V8 lets a flag turn it on for new contexts.
      setFlagsFromString('--expose-gc');
      (runInNewContext('gc') as () => void)();
      process.send!({ memory: 'gc', ...usage() });
    } else if (message?.memory === 'snapshot' && message.dir) {
      process.send!({ memory: 'snapshot', path: writeHeapSnapshot(join(message.dir, `${process.pid}-${Date.now()}.heapsnapshot`)) });
    }
  });
  // The channel must not keep the service alive on its own.
  process.channel?.unref();
}
