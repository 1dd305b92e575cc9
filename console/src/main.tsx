import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { apiKey, setApiKey } from './api';
import { Login } from './pages/Login';
import { ClusterPage } from './pages/Cluster';
import { DeploymentsPage } from './pages/Deployments';
import { ChatPage } from './pages/Chat';
import { KnowledgePage } from './pages/Knowledge';
import { RunsPage } from './pages/Runs';
import { MetricsPage } from './pages/Metrics';
import { WallPage } from './pages/Wall';
import { AuditPage } from './pages/Audit';
import './styles.css';

/** The pages, in navigation order; the hash (#/cluster) names the one shown. */
const PAGES = [
  { id: 'cluster', title: 'Cluster', view: ClusterPage },
  { id: 'deployments', title: 'Deployments', view: DeploymentsPage },
  { id: 'chat', title: 'Chat', view: ChatPage },
  { id: 'knowledge', title: 'Knowledge bases', view: KnowledgePage },
  { id: 'runs', title: 'Graph runs', view: RunsPage },
  { id: 'metrics', title: 'Metrics', view: MetricsPage },
  { id: 'audit', title: 'Audit log', view: AuditPage },
  { id: 'wall', title: 'Ops wall', view: WallPage },
] as const;

type PageId = (typeof PAGES)[number]['id'];

function currentPage(): PageId {
  const id = location.hash.replace(/^#\/?/, '').split('/')[0];
  return (PAGES.find((p) => p.id === id)?.id ?? 'cluster') as PageId;
}

function App() {
  const [key, setKey] = useState(apiKey());
  const [page, setPage] = useState<PageId>(currentPage());
  const [navOpen, setNavOpen] = useState(false);

  useEffect(() => {
    const onHash = () => {
      setPage(currentPage());
      setNavOpen(false);
    };
    const onUnauthorized = () => {
      setApiKey(null);
      setKey(null);
    };
    window.addEventListener('hashchange', onHash);
    window.addEventListener('shoal:unauthorized', onUnauthorized);
    return () => {
      window.removeEventListener('hashchange', onHash);
      window.removeEventListener('shoal:unauthorized', onUnauthorized);
    };
  }, []);

  useEffect(() => {
    const p = PAGES.find((x) => x.id === page);
    document.title = `${p?.title ?? 'Shoal'} · Shoal console`;
    document.body.classList.toggle('wall', page === 'wall');
  }, [page]);

  if (!key) {
    return <Login onLogin={(k) => (setApiKey(k), setKey(k))} />;
  }
  const View = PAGES.find((p) => p.id === page)!.view;
  return (
    <div class="shell">
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <button
          class="menu"
          aria-label="Menu"
          aria-expanded={navOpen}
          aria-controls="nav"
          onClick={() => setNavOpen(!navOpen)}
        >
          ☰
        </button>
        <span class="brand">Shoal</span>
        <span class="spacer" />
        <button
          class="link"
          onClick={() => {
            setApiKey(null);
            setKey(null);
          }}
        >
          Log out
        </button>
      </header>
      <nav id="nav" class={navOpen ? 'open' : ''} aria-label="Pages">
        <ul>
          {PAGES.map((p) => (
            <li key={p.id}>
              <a href={`#/${p.id}`} aria-current={p.id === page ? 'page' : undefined}>
                {p.title}
              </a>
            </li>
          ))}
        </ul>
      </nav>
      <main id="main" tabIndex={-1}>
        <View />
      </main>
    </div>
  );
}

render(<App />, document.getElementById('app')!);
