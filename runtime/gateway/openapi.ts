import { z } from 'zod';
import { ErrorBody, UNAVAILABLE_RETRY_AFTER_S } from './errors.js';

/**
 * A route as the OpenAPI document describes it. The gateway registers each route through
 * one of these, and validates with the very schemas listed here, so the document cannot
 * drift from what the gateway checks.
 *
 * @example
 *   { method: 'post', path: '/v1/runs', summary: 'Start a run', body: { schema: RunRequest, required: false },
 *     responses: { 202: { description: 'Run submitted', schema: RunAccepted } } }
 */
export interface RouteDoc {
  method: 'get' | 'post';
  /** OpenAPI form: `/v1/runs/{id}`. */
  path: string;
  summary: string;
  description?: string;
  tag: string;
  /** No bearer token needed (health, the document itself). */
  public?: boolean;
  /**
   * Needs NATS (the bus, the run store or the trigger log): refused with 503 `UNAVAILABLE`
   * and `Retry-After` while NATS is not reachable.
   */
  nats?: boolean;
  body?: { schema: z.ZodType; required: boolean; description?: string };
  query?: z.ZodObject;
  params?: Record<string, { description: string; schema: z.ZodType }>;
  headers?: { name: string; description: string; required: boolean; schema: z.ZodType }[];
  responses: Record<number, { description: string; schema?: z.ZodType; headers?: Record<string, string> }>;
}

/** JSON Schema (2020-12, as OpenAPI 3.1 uses) of what a request may send. */
export function requestSchema(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _drop, ...rest } = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return rest;
}

/** JSON Schema of what the gateway answers. */
export function responseSchema(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _drop, ...rest } = z.toJSONSchema(schema, { io: 'output', unrepresentable: 'any' }) as Record<string, unknown>;
  return rest;
}

const errorContent = () => ({ 'application/json': { schema: { $ref: '#/components/schemas/Error' } } });

/** Answers every route of a kind may give, added to each route's own. */
function standardResponses(route: RouteDoc): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (!route.public) {
    out['401'] = { description: 'No or malformed `Authorization: Bearer <token>` header (with `WWW-Authenticate: Bearer`).', content: errorContent() };
    out['403'] = { description: 'The bearer token is not accepted.', content: errorContent() };
  }
  if (route.body !== undefined || route.query !== undefined || route.params !== undefined || route.headers !== undefined) {
    out['400'] = { description: 'Bad input: malformed JSON, wrong types, unknown keys; `issues` lists each problem as `path: message`.', content: errorContent() };
  }
  if (route.body !== undefined) {
    out['413'] = { description: 'The body is larger than gateway_body_limit.', content: errorContent() };
    out['415'] = { description: 'A body that is not `application/json`.', content: errorContent() };
  }
  if (route.nats === true) {
    out['503'] = {
      description: `NATS is not reachable (\`UNAVAILABLE\`: the connection is down, or NATS did not answer in time). Retry after \`Retry-After\` seconds (${UNAVAILABLE_RETRY_AFTER_S}); with the same \`Idempotency-Key\` or delivery id a retry is safe.`,
      headers: { 'Retry-After': { description: 'Seconds to wait before retrying.', schema: { type: 'string' } } },
      content: errorContent(),
    };
  }
  out['500'] = { description: 'A bug in the gateway (details only in its log).', content: errorContent() };
  return out;
}

/**
 * The OpenAPI 3.1 document of the gateway, from its routes.
 *
 * @example buildOpenApi(routes, { version: '0.1.0' }).paths['/v1/runs'].post.requestBody
 */
export function buildOpenApi(routes: readonly RouteDoc[], info: { version: string }): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const parameters: unknown[] = [];
    for (const [name, p] of Object.entries(route.params ?? {})) {
      parameters.push({ name, in: 'path', required: true, description: p.description, schema: requestSchema(p.schema) });
    }
    if (route.query !== undefined) {
      const shape = route.query.shape as Record<string, z.ZodType>;
      for (const [name, schema] of Object.entries(shape)) {
        const json = requestSchema(schema);
        parameters.push({ name, in: 'query', required: !schema.safeParse(undefined).success, ...(typeof json.description === 'string' ? { description: json.description } : {}), schema: json });
      }
    }
    for (const h of route.headers ?? []) parameters.push({ name: h.name, in: 'header', required: h.required, description: h.description, schema: requestSchema(h.schema) });

    const responses: Record<string, unknown> = { ...standardResponses(route) };
    for (const [status, r] of Object.entries(route.responses)) {
      responses[status] = {
        description: r.description,
        ...(r.headers !== undefined ? { headers: Object.fromEntries(Object.entries(r.headers).map(([k, d]) => [k, { description: d, schema: { type: 'string' } }])) } : {}),
        ...(r.schema !== undefined ? { content: { 'application/json': { schema: responseSchema(r.schema) } } } : {}),
      };
    }
    (paths[route.path] ??= {})[route.method] = {
      operationId: operationId(route),
      summary: route.summary,
      ...(route.description !== undefined ? { description: route.description } : {}),
      tags: [route.tag],
      security: route.public ? [] : [{ bearer: [] }],
      ...(parameters.length > 0 ? { parameters } : {}),
      ...(route.body !== undefined
        ? { requestBody: { required: route.body.required, ...(route.body.description !== undefined ? { description: route.body.description } : {}), content: { 'application/json': { schema: requestSchema(route.body.schema) } } } }
        : {}),
      responses,
    };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'vmbackup gateway',
      version: info.version,
      description:
        'Start and follow backup runs of a XenServer / XCP-ng pool, run one phase on its own, list backups, and take webhook triggers. Every route but /healthz, /readyz and this document needs `Authorization: Bearer <token>`.',
    },
    jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'A token from gateway_tokens_file.' } },
      schemas: { Error: responseSchema(ErrorBody) },
    },
    security: [{ bearer: [] }],
    paths,
  };
}

function operationId(route: RouteDoc): string {
  const words = route.path
    .split('/')
    .filter((s) => s !== '' && s !== 'v1')
    .map((s) => s.replace(/[{}]/g, '').replace(/[^A-Za-z0-9]+(.)/g, (_m, c: string) => c.toUpperCase()));
  return [route.method, ...words.map((w) => w.charAt(0).toUpperCase() + w.slice(1))].join('');
}
