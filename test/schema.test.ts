import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(() => t.drop());

/**
 * The SQL contract as the database sees it after migrating: tables, columns, indexes,
 * policies and function signatures (bodies by hash). A change to supabase/migrations that
 * alters the contract shows up here as a diff to review and commit
 * (`npx vitest run -u test/schema.test.ts`); an unexpected change fails CI.
 */
it('matches the committed schema snapshot', async () => {
  const q = async (sql: string) =>
    (await t.sql.query(sql)).rows.map((r) => Object.values(r).join(' | '));
  const sections = {
    columns: await q(`
      select c.table_name, c.column_name, c.data_type, c.is_nullable, coalesce(c.column_default, '')
        from information_schema.columns c
       where c.table_schema = 'public' and (c.table_name like 'hd\\_%' or c.table_name = 'accounts_memberships')
       order by c.table_name, c.column_name`),
    constraints: await q(`
      select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        from pg_constraint where connamespace = 'public'::regnamespace order by 1, 2`),
    indexes: await q(
      `select indexname, indexdef from pg_indexes where schemaname = 'public' order by 1`,
    ),
    policies: await q(
      `select tablename, policyname, cmd, roles::text, qual from pg_policies where schemaname = 'public' order by 1, 2`,
    ),
    functions: await q(`
      select p.oid::regprocedure::text, pg_get_function_result(p.oid), p.provolatile::text,
             md5(p.prosrc), coalesce(array_to_string(p.proacl, ','), '') as acl,
             case when p.prosecdef then 'security definer' else 'invoker' end as security,
             coalesce(array_to_string(p.proconfig, ','), '') as config
        from pg_proc p
       where p.pronamespace = 'public'::regnamespace and (p.proname like 'hd\\_%' or p.proname = 'has_role_on_account')
       order by 1`),
    triggers: await q(
      `select event_object_table, trigger_name, action_timing, event_manipulation from information_schema.triggers where trigger_schema = 'public' order by 1, 2, 4`,
    ),
  };
  const text = Object.entries(sections)
    .map(([name, lines]) => `## ${name}\n${lines.join('\n')}\n`)
    .join('\n');
  await expect(text).toMatchFileSnapshot('./__snapshots__/schema.txt');
});
