import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { migrate } from '../../control-plane/db/migrate.ts';
import { enableRunnerLogin } from '../../control-plane/db/runner-role.ts';
import { startEmbeddedPostgres } from '../../control-plane/embedded-postgres.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Connection string of the suite's PostgreSQL, database `postgres`. */
    pgAdminUrl: string;
    /** A migrated database every test file clones (CREATE DATABASE … TEMPLATE). */
    pgTemplate: string;
    /** Same server as role hd_runner (lease-checked functions only), database `postgres`. */
    pgRunnerUrl: string;
  }
}

export const TEMPLATE_DB = 'hd_template';

/** One real PostgreSQL for the whole run, with a migrated template database. */
export default async function setup(project: TestProject) {
  const dir = await mkdtemp(join(tmpdir(), 'hd-test-pg-'));
  const database = await startEmbeddedPostgres({ dir, persistent: false });
  const admin = new pg.Client(database.connectionString());
  await admin.connect();
  await admin.query(`create database ${TEMPLATE_DB}`);
  await admin.end();
  const client = new pg.Client(database.connectionString(TEMPLATE_DB));
  await client.connect();
  await migrate(client);
  // Roles are the server's: once here, hd_runner can log in to every test database.
  await enableRunnerLogin(client, database.runnerPassword);
  await client.end();
  project.provide('pgAdminUrl', database.connectionString());
  project.provide('pgTemplate', TEMPLATE_DB);
  project.provide('pgRunnerUrl', database.runnerConnectionString());
  return async () => {
    await database.stop();
    await rm(dir, { recursive: true, force: true });
  };
}
