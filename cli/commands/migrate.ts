import pg from 'pg';
import { requireSetting } from '../../control-plane/config.ts';
import { migrate } from '../../control-plane/db/migrate.ts';
import { configFrom, type Command } from '../command.ts';

export const migrateCommand: Command = {
  name: 'migrate',
  summary: 'apply the SQL contract (supabase/migrations) to the database',
  usage: `hd-runner migrate [--force]

Applies every numbered file of supabase/migrations that the database has not seen (or
whose content changed), each in a transaction, under an advisory lock. The files are
re-runnable; --force applies all of them again.

Needs HD_DATABASE_URL (a direct PostgreSQL connection; on Supabase the pooler-less URL).`,
  options: { force: { type: 'boolean' } },
  async run(args, env) {
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
  },
};
