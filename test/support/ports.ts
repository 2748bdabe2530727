import { createServer } from 'node:net';

/**
 * Ports this process handed out: the kernel may give the same free port to two bind(0) calls in
 * a row (once the first is closed), and two settings naming one port then collide (EADDRINUSE).
 */
const handedOut = new Set<number>();

/** A port that was free on 127.0.0.1 a moment ago (for settings that must name the port up front), never one given before. */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = await anyFreePort();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('no free port on 127.0.0.1 that this process has not handed out already, in 100 tries');
}

function anyFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}
