// Loaded with `node --import` by tests: writes every module URL the process loaded to the
// file named by HD_TEST_IMPORTS_FILE when it exits (to check what `--help` loads).
import { writeFileSync } from 'node:fs';
import { registerHooks } from 'node:module';

const loaded: string[] = [];
registerHooks({
  load(url, context, nextLoad) {
    loaded.push(url);
    return nextLoad(url, context);
  },
});
process.on('exit', () => {
  if (process.env.HD_TEST_IMPORTS_FILE)
    writeFileSync(process.env.HD_TEST_IMPORTS_FILE, loaded.join('\n'));
});
