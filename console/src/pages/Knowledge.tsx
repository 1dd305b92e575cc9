import { useState } from 'preact/hooks';
import { del, get, post, uploadDocument, type CreateKnowledgeBase, type KnowledgeBase, type Model, type SearchRequest } from '../api';
import { usePoll } from '../hooks';
import { Badge, ErrorLine, Section, Stale } from '../ui';

interface Upload {
  name: string;
  progress: number;
  status: string;
  error?: string;
}

interface Hit {
  document_id: string;
  title?: string;
  score: number;
  text: string;
}

interface Doc {
  id: string;
  title: string;
  chunks: number;
  bytes: number;
}

/** Marks the query's words in a hit's text. */
function Highlight({ text, query }: { text: string; query: string }) {
  const words = query
    .toLowerCase()
    .split(/\s+/)
    .filter((w) => w.length > 2)
    .map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  if (words.length === 0) return <>{text}</>;
  const re = new RegExp(`(${words.join('|')})`, 'gi');
  return (
    <>
      {text.split(re).map((part, i) => (i % 2 ? <mark key={i}>{part}</mark> : part))}
    </>
  );
}

export function KnowledgePage() {
  const bases = usePoll(() => get<{ data: KnowledgeBase[] }>('/v1/knowledge-bases'), 3000);
  const models = usePoll(() => get<{ data: Model[] }>('/v1/models'), 0);
  const [selected, setSelected] = useState<string | null>(null);
  const [form, setForm] = useState({ name: '', embedding: '' });
  const [error, setError] = useState<string | null>(null);
  const [uploads, setUploads] = useState<Upload[]>([]);
  const [query, setQuery] = useState('');
  const [mode, setMode] = useState<'hybrid' | 'dense' | 'sparse'>('hybrid');
  const [hits, setHits] = useState<Hit[] | null>(null);
  const [dragging, setDragging] = useState(false);
  const docs = usePoll(
    () => (selected ? get<{ data: Doc[] }>(`/v1/knowledge-bases/${encodeURIComponent(selected)}/documents`) : Promise.resolve({ data: [] })),
    0,
    [selected],
  );
  const embedders = (models.data?.data ?? []).filter((m) => m.capabilities.includes('embedding'));

  const create = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const req: CreateKnowledgeBase = { name: form.name.trim(), embedding_model: form.embedding || embedders[0]?.id || '' };
    try {
      await post('/v1/knowledge-bases', req);
      setSelected(req.name);
      await bases.refresh();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  const upload = async (files: FileList | File[]) => {
    if (!selected) return;
    const list = Array.from(files);
    const state: Upload[] = list.map((f) => ({ name: f.name, progress: 0, status: 'waiting' }));
    setUploads(state);
    for (let i = 0; i < list.length; i++) {
      state[i] = { ...state[i], status: 'uploading' };
      setUploads([...state]);
      try {
        const r = await uploadDocument(selected, list[i], (p) => {
          state[i] = { ...state[i], progress: p, status: p < 1 ? 'uploading' : 'indexing' };
          setUploads([...state]);
        });
        state[i] = { ...state[i], progress: 1, status: `${r.status}, ${r.chunks} chunks` };
      } catch (err) {
        state[i] = { ...state[i], status: 'failed', error: err instanceof Error ? err.message : String(err) };
      }
      setUploads([...state]);
    }
    docs.refresh();
    bases.refresh();
  };

  const search = async (e: Event) => {
    e.preventDefault();
    if (!selected || !query.trim()) return;
    setError(null);
    try {
      const req: SearchRequest = { query: query.trim(), mode, top_k: 5 };
      const r = await post<{ data: Hit[] }>(`/v1/knowledge-bases/${encodeURIComponent(selected)}/search`, req);
      setHits(r.data);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  const removeDoc = async (id: string) => {
    if (!selected || !confirm(`Remove ${id} from ${selected}? Its chunks leave every index copy.`)) return;
    try {
      await del(`/v1/knowledge-bases/${encodeURIComponent(selected)}/documents/${encodeURIComponent(id)}`);
      docs.refresh();
      bases.refresh();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  const remove = async (name: string) => {
    if (!confirm(`Delete knowledge base ${name} and its index?`)) return;
    try {
      await del(`/v1/knowledge-bases/${encodeURIComponent(name)}`);
      if (selected === name) setSelected(null);
      bases.refresh();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };

  return (
    <>
      <h1>Knowledge bases</h1>
      <Stale updated={bases.updated} error={bases.error} />
      <ErrorLine error={error} />
      <Section title="Create">
        <form class="row" onSubmit={create}>
          <label>
            Name
            <input name="kb-name" required value={form.name} onInput={(e) => setForm({ ...form, name: (e.target as HTMLInputElement).value })} />
          </label>
          <label>
            Embedding model
            <select value={form.embedding || embedders[0]?.id || ''} onChange={(e) => setForm({ ...form, embedding: (e.target as HTMLSelectElement).value })}>
              {embedders.map((m) => (
                <option key={m.id} value={m.id}>
                  {m.id}
                </option>
              ))}
            </select>
          </label>
          <button type="submit" disabled={embedders.length === 0}>
            Create
          </button>
        </form>
        {embedders.length === 0 && <p class="muted">Deploy an embedding model first (e.g. all-minilm-l6-v2).</p>}
      </Section>
      <Section title="Bases">
        <table>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Status</th>
              <th scope="col">Embedding</th>
              <th scope="col">Documents</th>
              <th scope="col">Chunks</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {(bases.data?.data ?? []).map((b) => (
              <tr key={b.name} class={b.name === selected ? 'selected' : ''}>
                <td>
                  <button class="link" aria-pressed={b.name === selected} onClick={() => (setSelected(b.name), setHits(null))}>
                    {b.name}
                  </button>
                </td>
                <td>
                  <Badge state={b.status} />
                </td>
                <td>{b.embedding_model}</td>
                <td>{b.documents}</td>
                <td>{b.chunks}</td>
                <td>
                  <button class="danger" onClick={() => remove(b.name)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </Section>
      {selected && (
        <>
          <Section title={`Add documents to ${selected}`}>
            <div
              class={`drop ${dragging ? 'over' : ''}`}
              onDragOver={(e) => (e.preventDefault(), setDragging(true))}
              onDragLeave={() => setDragging(false)}
              onDrop={(e) => {
                e.preventDefault();
                setDragging(false);
                if (e.dataTransfer?.files) upload(e.dataTransfer.files);
              }}
            >
              <p>Drop .txt, .md, .html or .pdf files here, or</p>
              <label class="button">
                choose files
                <input
                  type="file"
                  multiple
                  class="sr-only"
                  accept=".txt,.md,.markdown,.html,.htm,.pdf"
                  onChange={(e) => {
                    const f = (e.target as HTMLInputElement).files;
                    if (f) upload(f);
                  }}
                />
              </label>
            </div>
            <ul class="uploads">
              {uploads.map((u) => (
                <li key={u.name}>
                  <span>{u.name}</span>
                  <progress max={1} value={u.progress} aria-label={`${u.name} upload`} />
                  <span class={u.error ? 'error' : ''}>{u.error ?? u.status}</span>
                </li>
              ))}
            </ul>
          </Section>
          <Section title="Documents">
            <table>
              <thead>
                <tr>
                  <th scope="col">Id</th>
                  <th scope="col">Title</th>
                  <th scope="col">Chunks</th>
                  <th scope="col">
                    <span class="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody data-testid="documents">
                {(docs.data?.data ?? []).map((d) => (
                  <tr key={d.id}>
                    <td>{d.id}</td>
                    <td>{d.title}</td>
                    <td>{d.chunks}</td>
                    <td>
                      <button class="danger" aria-label={`Remove ${d.id}`} onClick={() => removeDoc(d.id)}>
                        Remove
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </Section>
          <Section title="Search">
            <form class="row" onSubmit={search}>
              <label>
                Query
                <input name="query" value={query} onInput={(e) => setQuery((e.target as HTMLInputElement).value)} />
              </label>
              <label>
                Mode
                <select value={mode} onChange={(e) => setMode((e.target as HTMLSelectElement).value as typeof mode)}>
                  <option value="hybrid">hybrid</option>
                  <option value="dense">dense</option>
                  <option value="sparse">sparse</option>
                </select>
              </label>
              <button type="submit">Search</button>
            </form>
            {hits && hits.length === 0 && <p>No hits.</p>}
            <ol class="hits" data-testid="hits">
              {(hits ?? []).map((h, i) => (
                <li key={i}>
                  <strong>{h.title || h.document_id}</strong> <span class="muted">({h.document_id}, score {h.score.toFixed(3)})</span>
                  <p>
                    <Highlight text={h.text} query={query} />
                  </p>
                </li>
              ))}
            </ol>
          </Section>
        </>
      )}
    </>
  );
}
