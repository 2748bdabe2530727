import { monitorEventLoopDelay } from 'node:perf_hooks';

/**
 * Preloaded into a benchmarked service (`node --require dist/bench/eventloop-probe.js ...`,
 * spawned with an IPC channel): an event-loop delay histogram of its own, at 1 ms resolution,
 * that the benchmark resets and reads over IPC (`{ probe: 'reset' }`, `{ probe: 'read' }`), so a
 * window is exactly the load and nothing else. Values are the intervals between 1 ms timer
 * ticks: an idle loop reads about 1 ms, a loop blocked for 40 ms reads about 41 ms.
 */
const RESOLUTION_MS = 1;

if (process.send) {
  const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  histogram.enable();
  const ms = (nanoseconds: number) => nanoseconds / 1e6;
  process.on('message', (message: { probe?: string }) => {
    if (message?.probe === 'reset') {
      histogram.reset();
      process.send!({ probe: 'reset' });
    } else if (message?.probe === 'read') {
      process.send!({
        probe: 'read',
        resolutionMs: RESOLUTION_MS,
        count: histogram.count,
        p50Ms: ms(histogram.percentile(50)),
        p99Ms: ms(histogram.percentile(99)),
        p999Ms: ms(histogram.percentile(99.9)),
        maxMs: ms(histogram.max),
      });
    }
  });
  // The channel must not keep the service alive on its own.
  process.channel?.unref();
}
