/**
 * Imported first by every entry point: on a Node.js older than the supported LTS lines the native
 * SQLite module (better-sqlite3 13, Node-API) crashes the process with a segmentation fault, so
 * say what is wrong and exit instead.
 */
const MINIMUM_MAJOR = 22;
const major = Number(process.versions.node.split('.')[0]);
if (major < MINIMUM_MAJOR) {
  process.stderr.write(`Node.js ${process.versions.node} is not supported: use Node.js ${MINIMUM_MAJOR} or 24 (LTS).\n`);
  process.exit(2);
}
