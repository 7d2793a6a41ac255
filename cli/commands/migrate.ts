import pg from 'pg';
import { requireSetting } from '../../control-plane/config.ts';
import { migrate } from '../../control-plane/db/migrate.ts';
import { configFrom, type Env, type ParsedArgs } from '../command.ts';

export async function migrateCommand(args: ParsedArgs, env: Env): Promise<number> {
  const config = configFrom(env);
  const client = new pg.Client({
    connectionString: requireSetting(config, 'HD_DATABASE_URL', 'to migrate'),
  });
  await client.connect();
  try {
    const result = await migrate(client, { force: args.values.force === true });
    for (const name of result.applied) console.log(`applied  ${name}`);
    for (const name of result.current) console.log(`current  ${name}`);
    return 0;
  } finally {
    await client.end();
  }
}
