import { getHeapSpaceStatistics, setFlagsFromString, writeHeapSnapshot } from 'node:v8';
import { Session } from 'node:inspector';
import { join } from 'node:path';
import { runInNewContext } from 'node:vm';

/**
 * Preloaded into a benchmarked service (`node --require dist/bench/memory-probe.js ...`, spawned
 * with an IPC channel): answers `{ memory: 'usage' }` with process.memoryUsage() and V8's heap
 * spaces, `{ memory: 'gc' }` after a full garbage collection, and `{ memory: 'snapshot', dir }`
 * with the path of a heap snapshot written there. Nothing happens without the benchmark asking.
 */
interface SamplingNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: SamplingNode[];
}

if (process.send) {
  let session: Session | undefined;
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
    } else if (message?.memory === 'sample-start') {
      // Allocations, collected ones included: what a Check allocates, not what stays.
      session ??= (() => {
        const opened = new Session();
        opened.connect();
        return opened;
      })();
      session.post(
        'HeapProfiler.startSampling',
        { samplingInterval: 16_384, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true },
        () => process.send!({ memory: 'sample-start' }),
      );
    } else if (message?.memory === 'sample-stop' && session) {
      session.post('HeapProfiler.stopSampling', (error, result) => {
        const bySite = new Map<string, number>();
        const walk = (node: SamplingNode) => {
          const frame = node.callFrame;
          const site = `${frame.functionName || '(anonymous)'} ${frame.url.split('/').slice(-2).join('/')}:${frame.lineNumber + 1}`;
          bySite.set(site, (bySite.get(site) ?? 0) + node.selfSize);
          for (const child of node.children) walk(child);
        };
        if (!error) walk((result as unknown as { profile: { head: SamplingNode } }).profile.head);
        const sites = [...bySite].sort((a, b) => b[1] - a[1]).slice(0, 20);
        process.send!({ memory: 'sample-stop', total: [...bySite.values()].reduce((a, b) => a + b, 0), sites });
      });
    } else if (message?.memory === 'snapshot' && message.dir) {
      process.send!({ memory: 'snapshot', path: writeHeapSnapshot(join(message.dir, `${process.pid}-${Date.now()}.heapsnapshot`)) });
    }
  });
  // The channel must not keep the service alive on its own.
  process.channel?.unref();
}
