/**
 * The node (V8) flags ext-authz is started with, everywhere the project starts it: npm start
 * (services/local-stack/main.ts), docker-compose.yml (test/compose.test.ts checks it against
 * this list), `npm run start:ext-authz` and the benchmarks. They bound the heap that a steady
 * stream of Checks makes V8 grow and then keep, at the cost of more frequent collections:
 *
 * - `--max-semi-space-size=2`: the young generation's semi-spaces stop at 2 MB. V8's default on
 *   a 64-bit machine grows them to 32 MB x 2 (100 MB resident) under load, although what a Check
 *   allocates (about 15 KB, bench/ext-authz-memory.ts BENCH_ALLOCATIONS=1) dies within the call.
 * - `--heap-growing-percent=100`: the old generation is collected when it has doubled since the
 *   last full collection, instead of growing by up to 4x the live heap first.
 * - `--expose-gc`: gives ext-authz gc(), with which it hands the heap pages a load made V8 take
 *   back to the system once the load stops (services/ext-authz/idle-memory.ts). V8 keeps the pages
 *   a collection frees in a pool of its own, resident, until a last-resort collection; nothing
 *   else in Node runs one.
 *
 * RSS after 1M Checks with 100,000 distinct tokens, CPU per Check and the 100,000-key figures
 * with and without them are in the commit that set them; a process started without them works
 * the same, with more memory.
 */
export const EXT_AUTHZ_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=2', '--heap-growing-percent=100', '--expose-gc'];

/**
 * The environment ext-authz is started with beside those flags, by the same starts (compose sets
 * it in each ext-authz service's environment, npm scripts on the command line):
 *
 * - `MALLOC_ARENA_MAX=2`: glibc's malloc gives each thread that allocates an arena of its own, up
 *   to 8 per core (the main thread, V8's 4 platform workers and libuv's pool compile, collect and
 *   hash concurrently), and each keeps what it once held, fragmented, since malloc_trim is not
 *   reachable from JS. Two arenas: 150 -> 138.5 and 150.2 -> 141.8 MB RSS after 1M Checks with
 *   100,000 distinct tokens in two runs, 147.0 -> 148.7 in a third, same CPU per Check
 *   (bench/ext-authz-memory.ts; README, Benchmarks). glibc reads it before node starts, so
 *   it cannot be set from inside; another libc (musl) ignores it.
 */
export const EXT_AUTHZ_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };
