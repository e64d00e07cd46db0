import { Hono } from 'hono';
import type { Registry } from 'prom-client';
import { checkBearer, refusal, tokenDigests } from '../gateway/auth.js';
import { errorResponse } from '../gateway/errors.js';
import { METRICS_CONTENT_TYPE } from './metrics.js';

/**
 * A small HTTP app serving `GET /metrics` from `registry` (a worker's job counters and
 * durations), with the bearer tokens of metrics_tokens_file and gateway_tokens_file; none
 * only on a loopback address (the worker checks).
 *
 * @example await listen(metricsApp(metrics.registry, tokens), { host: '127.0.0.1', port: 9464 });
 */
export function metricsApp(registry: Registry, tokens: readonly string[]): Hono {
  const digests = tokenDigests(tokens);
  const app = new Hono();
  app.onError((error, c) => {
    const r = errorResponse(error);
    return c.json(r.body, r.status, r.headers);
  });
  app.notFound((c) => c.json({ error: 'NOT_FOUND', message: `no route ${c.req.method} ${c.req.path} (this is a worker: GET /metrics)` }, 404));
  app.get('/metrics', async (c) => {
    if (digests.length > 0) {
      const check = checkBearer(c.req.header('Authorization'), digests);
      if (!check.ok) throw refusal(check);
    }
    return c.body(await registry.metrics(), 200, { 'Content-Type': METRICS_CONTENT_TYPE });
  });
  return app;
}
