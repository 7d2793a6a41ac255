import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { migrate } from '../../control-plane/db/migrate.ts';
import { startEmbeddedPostgres } from '../../control-plane/embedded-postgres.ts';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Connection string of the suite's PostgreSQL, database `postgres`. */
    pgAdminUrl: string;
    /** A migrated database every test file clones (CREATE DATABASE … TEMPLATE). */
    pgTemplate: string;
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
  await client.end();
  project.provide('pgAdminUrl', database.connectionString());
  project.provide('pgTemplate', TEMPLATE_DB);
  return async () => {
    await database.stop();
    await rm(dir, { recursive: true, force: true });
  };
}
