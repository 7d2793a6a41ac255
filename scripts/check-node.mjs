// Stops `npm test` and `npm run demo` at once, with one line, on a Node.js older than the
// code needs. Plain JavaScript, so that any Node runs it. Under `npm run` the project's own
// Node 24 (the `node` dev dependency, linked as node_modules/.bin/node) is first on PATH:
// this fires only where that one could not be installed.
/* global process, console */
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 12)) {
  console.error(
    `hd-runner needs Node.js 22.12 or newer; this is ${process.version} (${process.execPath}). ` +
      'Run npm ci (it installs Node 24 for npm run) or install Node 24 LTS from nodejs.org.',
  );
  process.exit(1);
}
