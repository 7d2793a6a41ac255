import type pg from 'pg';

/**
 * Lets role hd_runner (migration 00010: lease-checked functions only) log in with its own
 * password, for a database this program runs itself (the demo, the tests). On any other
 * database the operator does this once, as docs/containers.md shows.
 */
export async function enableRunnerLogin(client: pg.ClientBase, password: string): Promise<void> {
  await client.query(`alter role hd_runner login password ${client.escapeLiteral(password)}`);
}
