import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { functionByName, functions } from '../../functions/index.js';
import { AlertmanagerPayload } from './alertmanager.js';
import { gatewayRoutes, invokeSchema } from './app.js';
import { requestSchema } from './openapi.js';
import { RunRequest } from './run-request.js';
import { testGateway } from './test-helpers.js';
import { GenericHook } from './webhook.js';
import { isPagePath } from './page.js';

const gw = testGateway();
const doc = (await (await gw.app.request('/v1/openapi.json')).json()) as {
  openapi: string;
  components: { securitySchemes: Record<string, { type: string; scheme: string }> };
  paths: Record<string, Record<string, { security: unknown[]; requestBody?: { content: { 'application/json': { schema: Record<string, unknown> } } }; responses: Record<string, unknown>; parameters?: { name: string; in: string }[] }>>;
};
const bodyOf = (p: string) => doc.paths[p]!.post!.requestBody!.content['application/json'].schema;

describe('GET /v1/openapi.json', () => {
  it('is OpenAPI 3.1 with a bearer security scheme', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
  });

  it('lists every route of the app, and only those', () => {
    const served = gatewayRoutes(gw.app)
      .filter((r) => r.path !== '/v1/functions/:name') // the catch-all answering 404 for unknown names
      .filter((r) => !isPagePath(r.path)) // the status page: HTML, not the API (page.test.ts)
      .map((r) => `${r.method.toLowerCase()} ${r.path.replace(/:(\w+)/g, '{$1}')}`)
      .sort();
    const documented = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m} ${p}`)).sort();
    expect(documented).toEqual(served);
    for (const f of functions) {
      if (f.remote) expect(documented).toContain(`post /v1/functions/${f.name}`);
      else expect(documented).not.toContain(`post /v1/functions/${f.name}`);
    }
  });

  it('public routes are health and the document; every other route needs the bearer token and documents 401/403', () => {
    for (const [p, ops] of Object.entries(doc.paths)) {
      for (const op of Object.values(ops)) {
        const isPublic = ['/healthz', '/readyz', '/v1/openapi.json'].includes(p);
        expect(op.security, p).toEqual(isPublic ? [] : [{ bearer: [] }]);
        if (!isPublic) expect(Object.keys(op.responses), p).toEqual(expect.arrayContaining(['401', '403']));
        if (op.requestBody !== undefined) expect(Object.keys(op.responses), p).toEqual(expect.arrayContaining(['400', '413']));
      }
    }
  });

  it('every route that needs NATS documents 503 UNAVAILABLE with Retry-After; health, the document, backups, status and metrics do not', () => {
    const withoutNats = ['/healthz', '/readyz', '/v1/openapi.json', '/v1/backups', '/v1/status', '/metrics'];
    for (const [p, ops] of Object.entries(doc.paths)) {
      for (const [m, op] of Object.entries(ops)) {
        const r503 = op.responses['503'] as { description: string; headers?: Record<string, unknown> } | undefined;
        if (withoutNats.includes(p)) {
          expect(r503?.headers?.['Retry-After'], `${m} ${p}`).toBeUndefined();
          continue;
        }
        expect(r503, `${m} ${p}`).toMatchObject({ description: expect.stringContaining('NATS is not reachable'), headers: { 'Retry-After': expect.anything() } });
      }
    }
    expect(Object.keys(doc.paths).filter((p) => !withoutNats.includes(p)).length).toBeGreaterThanOrEqual(10);
  });

  it.each([
    ['/v1/runs', RunRequest],
    ['/v1/hooks/alertmanager', AlertmanagerPayload],
    ['/v1/hooks/generic', GenericHook],
  ])('%s: the request schema is the one the route validates with', (p, schema) => {
    expect(bodyOf(p)).toEqual(requestSchema(schema as z.ZodType));
  });

  it.each(functions.filter((f) => f.remote).map((f) => [f.name]))('/v1/functions/%s: the function’s own input schema, ids optional', (name) => {
    const fn = functionByName(name)!;
    const documented = bodyOf(`/v1/functions/${name}`) as { properties: Record<string, unknown>; required?: string[] };
    expect(documented).toEqual(requestSchema(invokeSchema(fn)));
    const own = requestSchema(fn.subject.schema) as { properties: Record<string, unknown>; required?: string[] };
    expect(Object.keys(documented.properties).sort()).toEqual(Object.keys(own.properties).sort());
    for (const k of Object.keys(own.properties)) if (k !== 'runId' && k !== 'jobId') expect(documented.properties[k], k).toEqual(own.properties[k]);
    expect(documented.required ?? []).toEqual((own.required ?? []).filter((k) => k !== 'runId' && k !== 'jobId'));
  });

  it('runs carry their outcome and exit code, as `vmbackup status` shows them', () => {
    type Props = Record<string, { enum?: string[]; anyOf?: { const: number }[]; description?: string }>;
    const ok = (p: string) => (doc.paths[p]!.get!.responses['200'] as { content: { 'application/json': { schema: { properties: Props & { runs?: { items: { properties: Props } } } } } } }).content['application/json'].schema.properties;
    for (const props of [ok('/v1/runs').runs!.items.properties, ok('/v1/runs/{id}')]) {
      expect(props.outcome!.enum).toEqual(['success', 'warning', 'error', 'fatal']);
      expect(props.exitCode!.anyOf!.map((a) => a.const)).toEqual([0, 1, 2]);
      expect(props.outcome!.description).toContain('vmbackup status');
    }
    expect(doc.paths['/v1/runs']!.get).toMatchObject({ description: expect.stringContaining('outcome') });
  });

  it('backup sets say why they do not count, and how their verification went', () => {
    const body = JSON.stringify(doc.paths['/v1/backups']!.get!.responses['200']);
    for (const field of ['"complete"', '"incompleteReason"', '"incompleteMessage"', '"verify"', 'failed-verification']) expect(body).toContain(field);
  });

  it('documents the path, query and header parameters', () => {
    expect(doc.paths['/v1/runs/{id}']!.get!.parameters).toEqual([expect.objectContaining({ name: 'id', in: 'path' })]);
    expect(doc.paths['/v1/runs']!.get!.parameters).toEqual([expect.objectContaining({ name: 'limit', in: 'query' })]);
    expect(doc.paths['/v1/backups']!.get!.parameters).toEqual([expect.objectContaining({ name: 'vm', in: 'query' })]);
    expect(doc.paths['/v1/runs']!.post!.parameters).toEqual([expect.objectContaining({ name: 'Idempotency-Key', in: 'header' })]);
    expect(doc.paths['/v1/hooks/generic']!.post!.parameters).toEqual([expect.objectContaining({ name: 'X-Hub-Signature-256', in: 'header' })]);
  });
});
