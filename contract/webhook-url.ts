import { z } from 'zod';

/**
 * A job's (`debug.webhook_url`) or a batch's own webhook URL, as the checks of migration
 * 00022 accept it: http(s), a host without credentials, no whitespace, ≤ 2048 characters.
 * Where it may point (no loopback, private or metadata address) is the delivery's guard.
 */
export const webhookUrlSchema = z
  .string()
  .max(2048, 'at most 2048 characters')
  .regex(/^https?:\/\/[^/?#@\s]+([/?#]\S*)?$/, 'an http(s) URL without credentials or spaces')
  .refine((url) => URL.canParse(url), 'not a URL');
