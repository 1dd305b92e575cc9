// The gateway's HTTP API, typed from its OpenAPI description (src/api-schema.d.ts is
// generated from gateway/src/http/openapi.json by `npm run types`).
import type { components, paths } from './api-schema';

export type Schemas = components['schemas'];
export type Cluster = Schemas['Cluster'];
export type Node = Schemas['Node'];
export type Deployment = Schemas['Deployment'];
export type Model = Schemas['Model'];
export type KnowledgeBase = Schemas['KnowledgeBase'];
export type RunSummary = Schemas['RunSummary'];
export type Run = Schemas['Run'];
export type DeployRequest = NonNullable<paths['/v1/deployments']['post']['requestBody']>['content']['application/json'];
export type SearchRequest = NonNullable<
  paths['/v1/knowledge-bases/{name}/search']['post']['requestBody']
>['content']['application/json'];
export type CreateKnowledgeBase = NonNullable<
  paths['/v1/knowledge-bases']['post']['requestBody']
>['content']['application/json'];

/** The key lives in this tab's session storage only: never in a URL, gone when the tab closes. */
const KEY = 'shoal.api-key';

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key: string | null) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An error answer, with the gateway's own message. */
export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

function headers(extra?: Record<string, string>): Record<string, string> {
  const h: Record<string, string> = { ...extra };
  const k = apiKey();
  if (k) h['Authorization'] = `Bearer ${k}`;
  return h;
}

async function answer<T>(r: Response): Promise<T> {
  const text = await r.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!r.ok) {
    const msg =
      (body as { error?: { message?: string } } | null)?.error?.message || text || `${r.status} ${r.statusText}`;
    if (r.status === 401) window.dispatchEvent(new CustomEvent('shoal:unauthorized'));
    throw new ApiError(r.status, msg);
  }
  return body as T;
}

export async function get<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { headers: headers() }));
}

export async function post<T>(path: string, body: unknown): Promise<T> {
  return answer<T>(
    await fetch(path, {
      method: 'POST',
      headers: headers({ 'Content-Type': 'application/json' }),
      body: JSON.stringify(body),
    }),
  );
}

export async function del<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { method: 'DELETE', headers: headers() }));
}

/** Checks a key: any answer but 401/403 from a user route means it works. */
export async function checkKey(key: string): Promise<void> {
  const r = await fetch('/v1/models', { headers: { Authorization: `Bearer ${key}` } });
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => null);
    throw new ApiError(r.status, body?.error?.message || 'the key was refused');
  }
  if (!r.ok) throw new ApiError(r.status, `the gateway answered ${r.status}`);
}

/** Uploads one file as a knowledge-base document, reporting progress (0..1). */
export function uploadDocument(
  kb: string,
  file: File,
  onProgress: (fraction: number) => void,
): Promise<{ status: string; chunks: number }> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const id = encodeURIComponent(file.name);
    xhr.open('PUT', `/v1/knowledge-bases/${encodeURIComponent(kb)}/documents/${id}?file_name=${id}`);
    const k = apiKey();
    if (k) xhr.setRequestHeader('Authorization', `Bearer ${k}`);
    if (file.type) xhr.setRequestHeader('Content-Type', file.type);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      let body: { status?: string; chunks?: number; error?: { message?: string } } = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve({ status: body.status ?? 'indexed', chunks: body.chunks ?? 0 });
      else reject(new ApiError(xhr.status, body.error?.message || `${xhr.status}`));
    };
    xhr.onerror = () => reject(new ApiError(0, 'the upload could not reach the gateway'));
    xhr.send(file);
  });
}

/** One streamed chat answer: calls `onText` with each piece, `onExtra` with other fields. */
export async function streamChat(
  body: Record<string, unknown>,
  onText: (t: string) => void,
  onExtra: (chunk: Record<string, unknown>) => void,
  signal?: AbortSignal,
): Promise<void> {
  const r = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: headers({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!r.ok || !r.body) {
    await answer(r);
    return;
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let cut: number;
    while ((cut = pending.indexOf('\n\n')) >= 0) {
      const event = pending.slice(0, cut);
      pending = pending.slice(cut + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error.message ?? 'the answer failed');
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) onText(delta);
        onExtra(chunk);
      }
    }
  }
}

export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtAge(ms: number | null | undefined): string {
  if (ms == null) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.round(ms / 60_000)} min`;
}
