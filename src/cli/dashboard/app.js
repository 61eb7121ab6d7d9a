/*
 * app.js: the atomizer dashboard's page.  One page, routed by the URL's
 * hash (#/overview, #/jobs?..., #/job/ID, #/dead, #/queues, #/schedules,
 * #/workers), drawn from the JSON API.
 *
 * Everything from the database is put in the page as text (textContent,
 * never innerHTML): payloads and error messages may contain <script>.
 * Actions are POSTs with the session's CSRF token (GET /api/session).
 *
 * Live: the page subscribes to GET /api/events (Server-Sent Events) and
 * draws the visible page again when an event says something changed, at
 * most every 500 ms, and not while the visitor is typing in it.  It never
 * polls.
 */
'use strict';

let session = null;

/* el('td', {class: 'x'}, 'text', child...): an element; strings become text */
function el(tag, attrs, ...children) {
	const e = document.createElement(tag);
	for (const [k, v] of Object.entries(attrs || {})) {
		if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
		else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
	}
	for (const c of children) {
		if (c === null || c === undefined) continue;
		e.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
	}
	return e;
}

function text(v) {
	if (v === null || v === undefined) return '';
	if (typeof v === 'object') return JSON.stringify(v);
	return String(v);
}

function when(ts) {
	return ts ? new Date(ts).toLocaleString() : '';
}

async function api(path, params, post, keepEmpty) {
	const q = new URLSearchParams();
	for (const [k, v] of Object.entries(params || {}))
		if (v !== null && v !== undefined && (v !== '' || keepEmpty)) q.set(k, v);
	const url = path + (q.toString() ? '?' + q : '');
	const opts = post ? {method: 'POST', headers: {'X-CSRF-Token': session.csrf}} : {};
	const r = await fetch(url, opts);
	const body = await r.json();
	if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
	return body;
}

function flash(msg, bad) {
	const f = document.getElementById('flash');
	f.textContent = msg;
	f.className = bad ? 'bad' : 'good';
	f.hidden = false;
}

/* an action button: POST, then redraw the page */
function action(label, path, params, confirmText) {
	return el('button', {
		class: 'action', 'data-action': label,
		disabled: session.read_only ? 'disabled' : null,
		onclick: async () => {
			if (confirmText && !window.confirm(confirmText)) return;
			try {
				const r = await api(path, params, true);
				flash(label + ': ' + JSON.stringify(r), false);
			} catch (e) {
				flash(label + ': ' + e.message, true);
			}
			route();
		}
	}, label);
}

function table(columns, rows, cell) {
	return el('table', {},
		el('thead', {}, el('tr', {}, ...columns.map(c => el('th', {}, c)))),
		el('tbody', {}, ...rows.map(r => el('tr', {},
			...columns.map(c => el('td', {'data-col': c}, cell ? cell(r, c) : text(r[c])))))));
}

function tagList(tags) {
	return el('span', {class: 'tags'}, ...(tags || []).map(t => el('span', {class: 'tag'}, t)));
}

function jobLink(id) {
	return el('a', {href: '#/job/' + id}, '#' + id);
}

const STATES = ['scheduled', 'available', 'blocked', 'running', 'retrying', 'succeeded', 'dead', 'cancelled'];
const UNFINISHED = ['scheduled', 'available', 'blocked', 'running', 'retrying'];

/* seconds, shortly: 850 ms, 2.5 s, 10 min */
function secs(v) {
	if (v === null || v === undefined) return '–';
	if (v < 1) return Math.round(v * 1000) + ' ms';
	if (v < 60) return (Math.round(v * 10) / 10) + ' s';
	if (v < 3600) return (Math.round(v / 6) / 10) + ' min';
	return (Math.round(v / 360) / 10) + ' h';
}

function pct(v) {
	return v === null || v === undefined ? '–' : (Math.round(v * 1000) / 10) + ' %';
}

/* one window's figures (hour or day) as a cell */
function windowCell(w, what) {
	if (!w) return '–';
	if (what === 'done') return w.succeeded + ' ok · ' + w.failed + ' failed · ' + w.dead + ' dead · ' + w.cancelled + ' cancelled';
	if (what === 'rate') return w.per_minute + '/min · ' + (w.failure_rate === null ? 'nothing finished' : pct(w.failure_rate) + ' failing');
	if (what === 'wait') return secs(w.wait_p50) + ' / ' + secs(w.wait_p95) + ' / ' + secs(w.wait_p99);
	if (what === 'run') return secs(w.run_p50) + ' / ' + secs(w.run_p95) + ' / ' + secs(w.run_p99);
	return '';
}

async function pageOverview(main) {
	const o = await api('/api/overview');
	const jobsLink = (q, st, n) => n > 0 ? el('a', {href: '#/jobs?queue=' + encodeURIComponent(q) + (st ? '&state=' + st : '')}, text(n)) : text(n);
	main.append(el('h2', {}, 'Queues'),
		table(['queue', 'paused', ...UNFINISHED, 'oldest waiting', 'workers busy', 'workers idle'], o.queues, (r, c) => {
			if (c === 'queue') return el('a', {href: '#/jobs?queue=' + encodeURIComponent(r.queue)}, r.queue);
			if (UNFINISHED.includes(c)) return jobsLink(r.queue, c, r[c]);
			if (c === 'oldest waiting') return r.oldest_available ? secs((Date.parse(o.now) - Date.parse(r.oldest_available)) / 1000) : '–';
			if (c === 'workers busy') return text(r.workers_busy);
			if (c === 'workers idle') return text(r.workers_idle);
			return text(r[c]);
		}));
	if (o.shared) {
		main.append(el('h2', {}, 'Finished'),
			table(['queue', 'since start', 'last hour', 'last day', 'throughput (hour)', 'throughput (day)',
				'wait p50 / p95 / p99 (hour)', 'run p50 / p95 / p99 (hour)', 'wait p50 / p95 / p99 (day)', 'run p50 / p95 / p99 (day)'],
			o.queues, (r, c) => {
				if (c === 'queue') return r.queue;
				if (c === 'since start') return windowCell(r.total, 'done');
				if (c === 'last hour') return windowCell(r.hour, 'done');
				if (c === 'last day') return windowCell(r.day, 'done');
				if (c === 'throughput (hour)') return windowCell(r.hour, 'rate');
				if (c === 'throughput (day)') return windowCell(r.day, 'rate');
				if (c === 'wait p50 / p95 / p99 (hour)') return windowCell(r.hour, 'wait');
				if (c === 'run p50 / p95 / p99 (hour)') return windowCell(r.hour, 'run');
				if (c === 'wait p50 / p95 / p99 (day)') return windowCell(r.day, 'wait');
				if (c === 'run p50 / p95 / p99 (day)') return windowCell(r.day, 'run');
				return '';
			}),
			el('p', {class: 'muted'}, 'Every role\'s jobs: states sampled by the scheduler, finished work from its counters and per-minute rollups.'));
	} else {
		main.append(el('p', {class: 'muted', id: 'own-only'}, 'Counts of your own unfinished jobs. Finished figures, and every role\'s jobs, need atomizer_admin, atomizer_worker or pg_monitor.'));
	}
	main.append(el('h2', {}, 'Workers'),
		o.workers.length ? table(['queue', 'state', 'count'], o.workers) : el('p', {}, 'No worker process is running.'),
		el('p', {class: 'muted'}, 'As of ' + when(o.now)));
}

async function pageJobs(main, params) {
	const form = el('form', {id: 'filters'});
	const fields = ['queue', 'state', 'handler', 'id', 'owner', 'error', 'payload', 'result',
		'created_after', 'created_before', 'finished_after', 'finished_before', 'path'];
	const hints = {payload: 'payload contains (JSON)', result: 'result contains (JSON)',
		path: 'payload matches (JSON path, e.g. $.n ? (@ > 2))',
		created_after: 'created after (e.g. 2026-11-22 07:00+00)', created_before: 'created before',
		finished_after: 'finished after', finished_before: 'finished before'};
	for (const f of fields) {
		let input;
		if (f === 'state') {
			input = el('select', {name: f}, el('option', {value: ''}, 'any state'),
				...STATES.map(s => el('option', {value: s, selected: params.get(f) === s ? 'selected' : null}, s)));
		} else {
			input = el('input', {name: f, placeholder: hints[f] || f, title: hints[f] || f});
			input.value = params.get(f) || '';
		}
		form.append(input);
	}
	form.append(el('button', {type: 'submit'}, 'Search'));
	form.addEventListener('submit', ev => {
		ev.preventDefault();
		const q = new URLSearchParams();
		for (const f of fields) if (form.elements[f].value) q.set(f, form.elements[f].value);
		location.hash = '#/jobs?' + q;
	});
	main.append(el('h2', {}, 'Jobs'), form);
	const q = {};
	for (const f of fields.concat(['before'])) q[f] = params.get(f);
	const r = await api('/api/jobs', q);
	if (r.jobs.length) main.append(bulkBar(fields, params));
	main.append(table(['id', 'queue', 'handler', 'state', 'attempt', 'run_at', 'owner', 'tags', 'last_error'], r.jobs, (j, c) => {
		if (c === 'id') return jobLink(j.id);
		if (c === 'tags') return tagList(j.tags);
		if (c === 'run_at') return when(j.run_at);
		return text(j[c]);
	}));
	if (!r.jobs.length) main.append(el('p', {}, 'No job matches.'));
	if (r.next) {
		const n = new URLSearchParams(params);
		n.set('before', r.next);
		main.append(el('p', {}, el('a', {href: '#/jobs?' + n, id: 'next'}, 'Older jobs →')));
	}
}

/*
 * The bulk bar of the jobs page: "Select all matching" counts what the
 * filters match (GET /api/jobs/count, only on request: a count costs what
 * it counts), then retry or cancel them all, confirmed with that count;
 * the server does it in batches and refuses if the count moved meanwhile.
 */
let bulkCounted = null;	/* {hash, count, batch}: the bar stays open over live redraws */

function bulkBar(fields, params) {
	const filters = {};
	for (const f of fields) if (params.get(f)) filters[f] = params.get(f);
	const bar = el('div', {id: 'bulk', class: 'bulk'});
	const open = c => bar.replaceChildren(el('span', {id: 'bulk-matching'}, 'All ' + c.count + ' matching job(s): '),
		bulkAction('Retry all', 'retry', c.count, filters),
		bulkAction('Cancel all', 'cancel', c.count, filters),
		el('span', {class: 'muted'}, ' in batches of ' + c.batch));
	if (bulkCounted && bulkCounted.hash === location.hash) {
		open(bulkCounted);
		return bar;
	}
	bar.append(el('button', {type: 'button', id: 'bulk-count', onclick: async () => {
		try {
			const c = await api('/api/jobs/count', filters);
			bulkCounted = {hash: location.hash, count: c.count, batch: c.batch};
			open(bulkCounted);
		} catch (e) {
			flash(e.message, true);
		}
	}}, 'Select all matching…'));
	return bar;
}

function bulkAction(label, act, n, filters) {
	return el('button', {
		class: 'action', 'data-action': label, disabled: session.read_only || !n ? 'disabled' : null,
		onclick: async () => {
			if (!window.confirm(label.replace(' all', '') + ' all ' + n + ' matching job(s)?')) return;
			bulkCounted = null;
			try {
				const r = await api('/api/jobs/bulk', Object.assign({action: act, expected: n}, filters), true);
				flash(label + ': ' + r.done + ' of ' + r.matched + ' job(s), in ' + r.batches + ' batch(es)', false);
			} catch (e) {
				flash(label + ': ' + e.message, true);
			}
			route();
		}
	}, label + ' (' + n + ')');
}

async function pageJob(main, id) {
	const d = await api('/api/job', {id});
	const j = d.job;
	main.append(el('h2', {}, 'Job #' + j.id + ' ', el('span', {class: 'state state-' + j.state, id: 'job-state'}, j.state)));
	const acts = el('p', {});
	if (j.state === 'dead' || j.state === 'cancelled') acts.append(action('Retry', '/api/job/retry', {id: j.id}));
	if (['scheduled', 'available', 'blocked', 'retrying', 'running'].includes(j.state)) acts.append(action('Cancel', '/api/job/cancel', {id: j.id}, 'Cancel job #' + j.id + '?'));
	main.append(acts);
	const fields = ['queue', 'handler', 'owner', 'tags', 'priority', 'attempt', 'max_attempts', 'run_at', 'created_at', 'started_at', 'finished_at', 'worker', 'idempotency_key', 'last_error'];
	main.append(el('dl', {}, ...fields.flatMap(f => [el('dt', {}, f),
		el('dd', {'data-field': f}, f === 'tags' ? tagList(j.tags) : /_at$/.test(f) ? when(j[f]) : text(j[f]))])));
	main.append(el('h3', {}, 'Payload'), el('pre', {id: 'payload'}, JSON.stringify(j.payload, null, 2)));
	main.append(el('h3', {}, 'Result'), el('pre', {id: 'result'}, j.result === null ? '(none)' : JSON.stringify(j.result, null, 2)));
	main.append(el('h3', {}, 'Attempts that failed'),
		d.errors.length ? table(['attempt', 'failed_at', 'sqlstate', 'message', 'detail', 'hint', 'context'], d.errors,
			(e, c) => c === 'failed_at' ? when(e[c]) : text(e[c])) : el('p', {}, 'None.'));
	main.append(el('h3', {}, 'Timeline'), table(['at', 'event'], d.timeline || [], (t, c) => c === 'at' ? when(t.at) : text(t[c])));
	const links = (jobs, id) => jobs.length
		? el('ul', {class: 'links', id}, ...jobs.map(x => el('li', {}, jobLink(x.id), ' ',
			el('span', {class: 'state state-' + x.state}, x.state || 'purged'))))
		: el('p', {id}, 'None.');
	main.append(el('h3', {}, 'Waits for'), links(d.dependencies || [], 'dependencies'));
	main.append(el('h3', {}, 'Waited for by' + (d.dependents_total > (d.dependents || []).length
		? ' (the first ' + d.dependents.length + ' of ' + d.dependents_total + ')' : '')),
		links(d.dependents || [], 'dependents'));
}

async function pageDead(main) {
	const groups = await api('/api/dead');
	main.append(el('h2', {}, 'Dead letters'));
	if (!groups.length) { main.append(el('p', {}, 'No dead job.')); return; }
	main.append(table(['queue', 'handler', 'sqlstate', 'message', 'count', 'last_at', ''], groups, (g, c) => {
		if (c === 'last_at') return when(g.last_at);
		if (c === 'count') return el('a', {href: '#/jobs?state=dead&queue=' + encodeURIComponent(g.queue) + '&handler=' + encodeURIComponent(g.handler)}, text(g.count));
		if (c === '') return action('Retry this group', '/api/dead/retry',
			{queue: g.queue, handler: g.handler, sqlstate: g.sqlstate, message: g.message},
			'Retry ' + g.count + ' dead job(s) of ' + g.handler + ' in queue ' + g.queue + '?');
		return text(g[c]);
	}));
}

/* the settings the queues page edits (POST /api/queue/settings) */
const QUEUE_SETTINGS = [
	['concurrency', 'number'], ['max_attempts', 'number'], ['backoff_base', 'text'],
	['backoff_cap', 'text'], ['backoff_jitter', 'text'], ['timeout', 'text'], ['retention', 'text'],
	['rate_limit', 'number'], ['rate_period', 'text'], ['rate_partition', 'text'],
	['before_run', 'text'], ['on_success', 'text'], ['on_failure', 'text'], ['on_dead', 'text']];

async function pageQueues(main) {
	const qs = await api('/api/queues');
	const admin = session.who.admin && !session.read_only;
	main.append(el('h2', {}, 'Queues'));
	main.append(table(['name', 'paused', 'external', 'settings', 'handler limits', ''], qs, (q, c) => {
		if (c === 'handler limits')
			return (q.handler_limits || []).length
				? el('ul', {class: 'limits'}, ...q.handler_limits.map(l =>
					el('li', {}, el('code', {}, text(l.handler)), ' at most ' + text(l.concurrency) + ' running')))
				: el('span', {class: 'muted'}, 'none');
		if (c === 'settings')
			return el('div', {class: 'settings'}, ...QUEUE_SETTINGS.map(([name, type]) => {
				if (!admin) return el('span', {class: 'field'}, el('small', {}, name), text(q[name]) || '–');
				const input = el('input', {type: type, name: name, class: 'setting', 'data-queue': q.name,
					'aria-label': name + ' of ' + q.name});
				input.value = text(q[name]);
				input.dataset.was = input.value;
				return el('label', {class: 'field'}, el('small', {}, name), input);
			}));
		if (c !== '') return text(q[c]);
		return el('span', {},
			q.paused ? action('Resume', '/api/queue/resume', {name: q.name}) : action('Pause', '/api/queue/pause', {name: q.name}),
			admin ? el('button', {class: 'action', 'data-action': 'Save settings', onclick: async ev => {
				const row = ev.target.closest('tr');
				const params = {name: q.name};
				for (const input of row.querySelectorAll('input.setting'))
					if (input.value !== input.dataset.was) params[input.name] = input.value;
				if (Object.keys(params).length === 1) { flash('nothing changed for ' + q.name, false); return; }
				try {
					await api('/api/queue/settings', params, true, true);	/* empty: remove a hook */
					flash('settings of ' + q.name + ' saved: ' + Object.keys(params).filter(k => k !== 'name').join(', '), false);
				} catch (e) { flash(q.name + ': ' + e.message, true); }
				route();
			}}, 'Save settings') : null);
	}));
	main.append(el('p', {class: 'muted'}, 'Handler limits are set with atomizer.limit_handler(queue, handler, concurrency).'));
	if (!session.who.admin) main.append(el('p', {class: 'muted'}, 'Changing queues needs the atomizer_admin role.'));
}

async function pageSchedules(main) {
	const ss = await api('/api/schedules');
	main.append(el('h2', {}, 'Schedules'));
	if (!ss.length) { main.append(el('p', {}, 'No schedule.')); return; }
	main.append(table(['name', 'when', 'tz', 'handler', 'queue', 'enabled', 'next five', 'last_run', 'last_outcome', 'recent fires', 'fires', ''], ss, (s, c) => {
		if (c === 'when') return el('span', {}, el('span', {class: 'words'}, text(s.in_words)), el('br', {}), el('code', {class: 'muted'}, text(s.spec)));
		if (c === 'next five') return el('ul', {class: 'fires'}, ...(s.next_five || []).map(t => el('li', {}, when(t))));
		if (c === 'last_run') return when(s.last_run);
		if (c === 'last_outcome') return s.last_job_id ? el('span', {}, jobLink(s.last_job_id), ' ' + text(s.last_outcome)) : '';
		if (c === 'recent fires') return el('ul', {class: 'fires recent'}, ...(s.recent || []).map(f =>
			el('li', {}, jobLink(f.id), ' ', el('span', {class: 'state state-' + f.state}, f.state), ' ' + when(f.created_at))));
		if (c === '') return el('span', {},
			action('Run now', '/api/schedule/run', {name: s.name}),
			s.enabled ? action('Disable', '/api/schedule/disable', {name: s.name}) : action('Enable', '/api/schedule/enable', {name: s.name}));
		return text(s[c]);
	}));
	if (ss.some(s => s.last_error)) main.append(el('h3', {}, 'Errors'),
		table(['name', 'last_error'], ss.filter(s => s.last_error)));
}

async function pageWorkers(main) {
	const w = await api('/api/workers');
	main.append(el('h2', {}, 'Worker processes'),
		w.processes.length ? table(['pid', 'database', 'queue', 'state', 'job_id', 'jobs_succeeded', 'jobs_failed', 'started_at'], w.processes,
			(p, c) => c === 'started_at' ? when(p[c]) : text(p[c])) : el('p', {}, 'No worker process is running.'),
		el('h2', {}, 'External workers (from their leases)'),
		w.leases.length ? table(['worker', 'queue', 'jobs', 'lease_until'], w.leases, (p, c) => c === 'lease_until' ? when(p[c]) : text(p[c])) : el('p', {}, 'No job is leased.'));
}

let routeGen = 0;

/* draw the page the hash names; the latest call wins */
async function route() {
	const gen = ++routeGen;
	const hash = location.hash.replace(/^#\/?/, '') || 'overview';
	const [path, query] = hash.split('?');
	const parts = path.split('/');
	const page = parts[0];
	for (const a of document.querySelectorAll('#nav a'))
		a.className = a.dataset.page === page ? 'current' : '';
	/* data-hash: which page this draw is of (tests wait for it) */
	const fresh = el('main', {id: 'main', 'data-page': page, 'data-hash': location.hash});
	try {
		if (page === 'overview') await pageOverview(fresh);
		else if (page === 'jobs') await pageJobs(fresh, new URLSearchParams(query || ''));
		else if (page === 'job') await pageJob(fresh, parts[1]);
		else if (page === 'dead') await pageDead(fresh);
		else if (page === 'queues') await pageQueues(fresh);
		else if (page === 'schedules') await pageSchedules(fresh);
		else if (page === 'workers') await pageWorkers(fresh);
		else fresh.append(el('p', {}, 'No such page.'));
	} catch (e) {
		fresh.append(el('p', {class: 'bad', id: 'error'}, e.message));
	}
	if (gen !== routeGen) return;	/* a later draw started meanwhile */
	fresh.setAttribute('data-ready', '1');
	document.getElementById('main').replaceWith(fresh);
}

/* live updates: redraw when the feed says something changed (debounced) */
const LIVE_MS = 500;
let liveTimer = null;
let liveLast = 0;
let livePending = false;

function liveRedraw() {
	liveTimer = null;
	const a = document.activeElement;
	if (a && a.closest && a.closest('main') && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)) {
		livePending = true;		/* the visitor is typing: after they leave */
		return;
	}
	livePending = false;
	liveLast = Date.now();
	document.body.setAttribute('data-live-redraws', String(Number(document.body.getAttribute('data-live-redraws') || 0) + 1));
	route();
}

function liveEvent() {
	if (liveTimer !== null) return;
	liveTimer = setTimeout(liveRedraw, Math.max(0, liveLast + LIVE_MS - Date.now()));
}

function subscribe() {
	const es = new EventSource('/api/events');
	es.addEventListener('hello', () => document.body.setAttribute('data-live', 'on'));
	es.addEventListener('change', liveEvent);
	es.onerror = () => document.body.setAttribute('data-live', 'off');	/* EventSource reconnects */
	document.addEventListener('focusout', () => { if (livePending) liveEvent(); });
}

async function start() {
	session = await api('/api/session');
	document.getElementById('who').textContent = session.who.role + '@' + session.who.database +
		(session.who.admin ? ' (admin)' : '') + (session.read_only ? ' · read-only' : '');
	window.addEventListener('hashchange', () => { document.getElementById('flash').hidden = true; route(); });
	route();
	subscribe();
}

start();
