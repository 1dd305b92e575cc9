import { useEffect, useRef, useState } from 'preact/hooks';
import { get, streamChat, type KnowledgeBase, type Model } from '../api';
import { ErrorLine } from '../ui';

interface Turn {
  role: 'user' | 'assistant';
  content: string;
  citations?: { index: number; title?: string; document_id?: string; text?: string }[];
  extra?: string;
  tools?: { name: string; arguments: string }[];
}

/** A playground: a model, a knowledge base or a graph; answers stream in. */
export function ChatPage() {
  const [models, setModels] = useState<Model[]>([]);
  const [bases, setBases] = useState<KnowledgeBase[]>([]);
  const [graphs, setGraphs] = useState<string[]>([]);
  const [target, setTarget] = useState('');
  const [kb, setKb] = useState('');
  const [temperature, setTemperature] = useState('');
  const [maxTokens, setMaxTokens] = useState(256);
  const [turns, setTurns] = useState<Turn[]>([]);
  const [input, setInput] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [streaming, setStreaming] = useState(false);
  const abort = useRef<AbortController | null>(null);
  const log = useRef<HTMLDivElement>(null);

  useEffect(() => {
    Promise.all([
      get<{ data: Model[] }>('/v1/models'),
      get<{ data: KnowledgeBase[] }>('/v1/knowledge-bases'),
      get<{ data: { name: string }[] }>('/v1/graphs'),
    ])
      .then(([m, k, g]) => {
        const chat = m.data.filter((x) => x.capabilities.includes('chat'));
        setModels(chat);
        setBases(k.data);
        setGraphs(g.data.map((x) => x.name));
        if (chat[0]) setTarget(chat[0].id);
      })
      .catch((e) => setError(String(e.message ?? e)));
  }, []);

  useEffect(() => {
    log.current?.scrollTo({ top: log.current.scrollHeight });
  }, [turns]);

  const send = async (e: Event) => {
    e.preventDefault();
    const text = input.trim();
    if (!text || !target) return;
    setInput('');
    setError(null);
    const history: Turn[] = [...turns, { role: 'user', content: text }];
    setTurns([...history, { role: 'assistant', content: '' }]);
    setStreaming(true);
    const controller = new AbortController();
    abort.current = controller;
    const body: Record<string, unknown> = {
      model: target,
      messages: history.map(({ role, content }) => ({ role, content })),
      max_tokens: maxTokens,
    };
    if (temperature !== '') body.temperature = Number(temperature);
    if (kb && !target.startsWith('graph:')) body.knowledge_base = kb;
    let answer = '';
    let citations: Turn['citations'];
    let extra: string | undefined;
    // Tool calls stream as OpenAI deltas: the first carries the name, later ones argument pieces.
    const tools: { name: string; arguments: string }[] = [];
    const show = () =>
      setTurns([...history, { role: 'assistant', content: answer, citations, extra, tools: tools.length ? [...tools] : undefined }]);
    try {
      await streamChat(
        body,
        (t) => {
          answer += t;
          show();
        },
        (chunk) => {
          if (Array.isArray(chunk.citations)) citations = chunk.citations as Turn['citations'];
          const calls = (chunk.choices as { delta?: { tool_calls?: { index: number; function?: { name?: string; arguments?: string } }[] } }[] | undefined)?.[0]
            ?.delta?.tool_calls;
          for (const c of calls ?? []) {
            const t = (tools[c.index] ??= { name: '', arguments: '' });
            t.name += c.function?.name ?? '';
            t.arguments += c.function?.arguments ?? '';
          }
          // A graph's answer carries the run's outputs: the SQL it ran, its citations.
          const outputs = (chunk.graph_run as { outputs?: Record<string, unknown> } | undefined)?.outputs;
          if (outputs) {
            if (typeof outputs.sql === 'string' && outputs.sql) extra = outputs.sql;
            if (Array.isArray(outputs.citations)) citations = outputs.citations as Turn['citations'];
          }
          show();
        },
        controller.signal,
      );
    } catch (err) {
      if (!controller.signal.aborted) setError(err instanceof Error ? err.message : String(err));
    } finally {
      setStreaming(false);
      abort.current = null;
    }
  };

  return (
    <div class="chat">
      <h1>Chat</h1>
      <div class="row settings">
        <label>
          Model or graph
          <select value={target} onChange={(e) => setTarget((e.target as HTMLSelectElement).value)}>
            {models.map((m) => (
              <option key={m.id} value={m.id}>
                {m.id} ({m.ready_replicas} ready)
              </option>
            ))}
            {graphs.map((g) => (
              <option key={g} value={`graph:${g}`}>
                graph: {g}
              </option>
            ))}
          </select>
        </label>
        <label>
          Knowledge base
          <select value={kb} onChange={(e) => setKb((e.target as HTMLSelectElement).value)}>
            <option value="">none</option>
            {bases.map((b) => (
              <option key={b.name} value={b.name}>
                {b.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Temperature
          <input
            type="number"
            step="0.1"
            min="0"
            max="2"
            placeholder="model default"
            value={temperature}
            onInput={(e) => setTemperature((e.target as HTMLInputElement).value)}
          />
        </label>
        <label>
          Max tokens
          <input
            type="number"
            min="1"
            max="4096"
            value={maxTokens}
            onInput={(e) => setMaxTokens(Number((e.target as HTMLInputElement).value))}
          />
        </label>
      </div>
      {models.length === 0 && !error && <p class="muted">No chat model is deployed yet (see Deployments).</p>}
      <div class="log" ref={log} aria-live="polite" data-testid="chat-log">
        {turns.map((t, i) => (
          <div class={`turn ${t.role}`} key={i}>
            <div class="who">{t.role === 'user' ? 'You' : 'Shoal'}</div>
            <div class="text">{t.content || (streaming && i === turns.length - 1 ? '…' : '')}</div>
            {t.extra && <pre class="sql">{t.extra}</pre>}
            {t.tools?.map((c, j) => (
              <pre class="tool" key={j}>
                {c.name}({c.arguments})
              </pre>
            ))}
            {t.citations && t.citations.length > 0 && (
              <ol class="citations">
                {t.citations.map((c) => (
                  <li key={c.index}>
                    <strong>[{c.index}]</strong> {c.title ?? c.document_id}: {c.text?.slice(0, 160)}
                  </li>
                ))}
              </ol>
            )}
          </div>
        ))}
      </div>
      <ErrorLine error={error} />
      <form class="composer" onSubmit={send}>
        <label class="sr-only" for="prompt">
          Message
        </label>
        <textarea
          id="prompt"
          rows={2}
          value={input}
          placeholder="Ask something…"
          onInput={(e) => setInput((e.target as HTMLTextAreaElement).value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && !e.shiftKey) send(e);
          }}
        />
        {streaming ? (
          <button type="button" onClick={() => abort.current?.abort()}>
            Stop
          </button>
        ) : (
          <button type="submit" disabled={!input.trim() || !target}>
            Send
          </button>
        )}
      </form>
    </div>
  );
}
