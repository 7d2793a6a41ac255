import type pg from 'pg';

/** The roles whose rights form the contract (issue 11), in the order the tables show them. */
export const CONTRACT_ROLES = [
  'anon',
  'authenticated',
  'hd_runner',
  'hd_scheduler',
  'service_role',
] as const;

/** Table rights as one letter each: select, insert, update, delete, truncate. */
const TABLE_RIGHTS = [
  ['s', 'select'],
  ['i', 'insert'],
  ['u', 'update'],
  ['d', 'delete'],
  ['t', 'truncate'],
] as const;

/** One line per object: its name, then one cell per role, joined by single spaces. */
export type Matrix = Record<string, string>;

/**
 * Who may do what in schema `public`, read back from the database (not from the
 * migrations' text), in the same shape as an expected table written with `parseMatrix`:
 * - functions: `X` where the role may EXECUTE, `.` where not; keyed by name, or by the
 *   full signature where a name is overloaded (so a new overload shows up as a change);
 * - tables and views: the letters of TABLE_RIGHTS the role holds, `-` for none. select,
 *   insert and update count a grant on any single column too (has_any_column_privilege).
 */
export async function readGrantMatrix(
  sql: pg.Pool | pg.ClientBase,
): Promise<{ functions: Matrix; tables: Matrix }> {
  const roles = CONTRACT_ROLES.map((r, i) => `$${i + 1}::text`).join(', ');
  const { rows: fns } = await sql.query<{ name: string; cells: string[] }>(
    `select case when count(*) over (partition by p.proname) = 1 then p.proname
                 else p.oid::regprocedure::text end as name,
            array(select case when has_function_privilege(r, p.oid, 'execute') then 'X' else '.' end
                    from unnest(array[${roles}]) with ordinality as x(r, o) order by o) as cells
       from pg_proc p
      where p.pronamespace = 'public'::regnamespace
      order by 1`,
    [...CONTRACT_ROLES],
  );
  const rights = TABLE_RIGHTS.map(([letter, right]) => {
    const check = ['select', 'insert', 'update'].includes(right)
      ? `has_any_column_privilege(r, c.oid, '${right}')`
      : `has_table_privilege(r, c.oid, '${right}')`;
    return `case when ${check} then '${letter}' else '' end`;
  }).join(' || ');
  const { rows: tables } = await sql.query<{ name: string; cells: string[] }>(
    `select c.relname as name,
            array(select coalesce(nullif(${rights}, ''), '-')
                    from unnest(array[${roles}]) with ordinality as x(r, o) order by o) as cells
       from pg_class c
      where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
      order by 1`,
    [...CONTRACT_ROLES],
  );
  const toMatrix = (rows: { name: string; cells: string[] }[]) =>
    Object.fromEntries(rows.map((r) => [r.name, r.cells.join(' ')]));
  return { functions: toMatrix(fns), tables: toMatrix(tables) };
}

/**
 * An expected matrix written as a readable table: one object per line, its name, then one
 * cell per role (CONTRACT_ROLES order); blank lines and lines starting with `#` are skipped.
 */
export function parseMatrix(text: string): Matrix {
  const matrix: Matrix = {};
  for (const line of text.split('\n').map((l) => l.trim())) {
    if (line === '' || line.startsWith('#')) continue;
    const [name, ...cells] = line.split(/\s+/);
    if (!name || cells.length !== CONTRACT_ROLES.length) {
      throw new Error(`matrix line needs a name and ${CONTRACT_ROLES.length} cells: ${line}`);
    }
    if (name in matrix) throw new Error(`matrix names ${name} twice`);
    matrix[name] = cells.join(' ');
  }
  return matrix;
}

/** The RLS policies of schema `public`, one line each, and the tables without RLS. */
export async function readPolicies(
  sql: pg.Pool | pg.ClientBase,
): Promise<{ policies: string[]; tablesWithoutRls: string[] }> {
  const { rows } = await sql.query<{ line: string }>(
    `select concat_ws(' | ', tablename, policyname, permissive, cmd, roles::text,
                      coalesce(qual, '(no using)'), coalesce(with_check, '(no check)')) as line
       from pg_policies where schemaname = 'public' order by tablename, policyname`,
  );
  const { rows: open } = await sql.query<{ name: string }>(
    `select relname as name from pg_class
      where relnamespace = 'public'::regnamespace and relkind in ('r', 'p')
        and not relrowsecurity
      order by 1`,
  );
  return { policies: rows.map((r) => r.line), tablesWithoutRls: open.map((r) => r.name) };
}
