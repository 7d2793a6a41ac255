-- 00001: the pieces Supabase provides, created only where they are missing.
--
-- On a Supabase project every object below already exists and this file changes
-- nothing. On a plain PostgreSQL (the embedded default, tests) it creates the roles,
-- the `auth` helpers that RLS policies call, and a Makerkit-compatible
-- `public.has_role_on_account()` so the same policies work everywhere.
-- Re-runnable: every statement checks before it creates.

create extension if not exists pgcrypto;

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    -- As on Supabase: the service role bypasses RLS; it is what the worker uses.
    create role service_role nologin noinherit bypassrls;
  end if;
end
$$;

grant usage on schema public to anon, authenticated, service_role;

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

do $$
begin
  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $f$;
  end if;
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $f$;
  end if;
  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text
      language sql stable
      as $f$
        select coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $f$;
  end if;
end
$$;

-- Makerkit keeps memberships in public.accounts_memberships and answers
-- "may this user see this account?" with public.has_role_on_account(). Outside
-- Makerkit we provide the same shape: a personal account's id is its user's id.
create table if not exists public.accounts_memberships (
  user_id uuid not null,
  account_id uuid not null,
  account_role varchar(50) not null default 'member',
  created_at timestamptz not null default now(),
  primary key (user_id, account_id)
);
alter table public.accounts_memberships enable row level security;

do $$
begin
  if to_regprocedure('public.has_role_on_account(uuid, character varying)') is null then
    create function public.has_role_on_account(account_id uuid, account_role varchar default null)
      returns boolean
      language sql stable security definer
      set search_path = ''
      as $f$
        select account_id = auth.uid()
          or exists (
            select 1 from public.accounts_memberships m
             where m.user_id = auth.uid()
               and m.account_id = has_role_on_account.account_id
               and (has_role_on_account.account_role is null
                    or m.account_role = has_role_on_account.account_role)
          )
      $f$;
    grant execute on function public.has_role_on_account(uuid, varchar) to authenticated, service_role;
  end if;
end
$$;
