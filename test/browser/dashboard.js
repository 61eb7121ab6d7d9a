// dashboard.js BASE_URL USER PASSWORD OUT_DIR DEAD_JOB_ID QUEUE SCHEDULE BULK_QUEUE
//
// Drives Debian's headless Chromium through the atomizer dashboard (for
// test/t/060_dashboard.pl): loads every page and takes a screenshot of
// each into OUT_DIR, checks that a payload holding <script> is shown as
// text and never run, retries dead job DEAD_JOB_ID from its page and sees
// it become available, pauses QUEUE from the queues page, and runs
// SCHEDULE now from the schedules page (whose spec it shows in plain
// words), edits and saves max_attempts of QUEUE, while a second tab on the
// overview, subscribed to /api/events, draws QUEUE paused without a reload
// (live updates), and retries every dead job of BULK_QUEUE with the jobs
// page's bulk bar ("Select all matching", confirmed).  Prints one line per check,
// "ok ..." or "not ok ...", and exits non-zero when one failed.
'use strict';
const puppeteer = require('puppeteer-core');

const [base, user, password, out, deadId, queue, schedule, bulkQueue] = process.argv.slice(2);
let failed = 0;

function check(cond, what) {
	console.log((cond ? 'ok ' : 'not ok ') + what);
	if (!cond) failed++;
}

async function show(page, hash, shot) {
	await page.goto(base + '/' + hash, {waitUntil: 'load'});
	// the page marks main[data-ready] once drawn, and main[data-hash] says
	// which page it drew: wait for this hash's (the previous page's main
	// stays, ready, until the new one replaces it)
	await page.waitForFunction(
		h => { const m = document.querySelector('main[data-ready]'); return m && m.dataset.hash === h && location.hash === h; },
		{timeout: 15000}, hash);
	await page.waitForSelector('main[data-ready]', {timeout: 15000});
	if (shot) await page.screenshot({path: out + '/' + shot + '.png'});
	return page.$eval('main', m => m.textContent);
}

// Wait until the element's text satisfies ok (looked up afresh each time); the text.
async function waitText(page, selector, ok) {
	const deadline = Date.now() + 15000;
	let t = null;
	while (Date.now() < deadline) {
		t = await page.evaluate(sel => { const e = document.querySelector(sel); return e ? e.textContent : null; }, selector);
		if (t !== null && ok(t)) return t;
		await new Promise(r => setTimeout(r, 100));
	}
	return t;
}

// Click the button labelled action in the row whose column col is name, in one step.
async function clickInRow(page, col, name, action) {
	return page.evaluate((c, n, a) => {
		for (const tr of document.querySelectorAll('main[data-ready] tbody tr')) {
			const td = tr.querySelector('td[data-col="' + c + '"]');
			const b = tr.querySelector('button[data-action="' + a + '"]');
			if (td && td.textContent === n && b) { b.click(); return true; }
		}
		return false;
	}, col, name, action);
}

(async () => {
	const browser = await puppeteer.launch({
		executablePath: '/usr/bin/chromium',
		headless: true,
		args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
	});
	try {
		const page = await browser.newPage();
		await page.setViewport({width: 1200, height: 700});
		await page.authenticate({username: user, password: password});
		page.on('dialog', d => d.accept());
		page.on('pageerror', e => check(false, 'no script error in the page: ' + e.message));

		let t = await show(page, '#/overview', 'overview');
		check(t.includes('Queues') && t.includes(queue), 'overview lists queue ' + queue);
		t = await show(page, '#/jobs', 'jobs');
		check(t.includes('#' + deadId), 'jobs page lists job ' + deadId);
		t = await show(page, '#/jobs?state=dead', null);
		const states = await page.$$eval('td[data-col="state"]', tds => tds.map(td => td.textContent));
		check(t.includes('#' + deadId) && states.length > 0 && states.every(s => s === 'dead'),
			'the state filter shows dead jobs only (' + states.join(' ') + ')');
		t = await show(page, '#/dead', 'dead');
		check(t.includes('boom'), 'dead letters grouped, with the error message');
		t = await show(page, '#/queues', 'queues');
		check(t.includes(queue), 'queues page lists ' + queue);
		t = await show(page, '#/schedules', 'schedules');
		check(t.includes(schedule), 'schedules page lists ' + schedule);
		t = await show(page, '#/workers', 'workers');
		check(t.includes('Worker processes'), 'workers page');

		t = await show(page, '#/job/' + deadId, 'job');
		const payload = await page.$eval('#payload', e => e.textContent);
		check(payload.includes('<script>'), 'the payload\'s <script> is shown as text');
		check(await page.evaluate(() => window.__xss === undefined), 'the payload\'s script did not run');
		check(await page.evaluate(() => document.querySelectorAll('main script, main img').length === 0),
			'no element was made from data');
		check(t.includes('22012'), 'the attempts show the SQLSTATE');

		// retry the dead job from its page
		// (live redraws may replace any element at any time: every check
		// below looks elements up afresh, in the page)
		await page.click('button[data-action="Retry"]');
		const state = await waitText(page, '#job-state', s => s === 'available');
		check(state === 'available', 'after Retry the job is available (it is ' + state + ')');
		await page.screenshot({path: out + '/job-retried.png'});

		// a second tab watches the overview live
		const watcher = await browser.newPage();
		await watcher.setViewport({width: 1200, height: 700});
		await watcher.authenticate({username: user, password: password});
		watcher.on('pageerror', e => check(false, 'no script error in the watching tab: ' + e.message));
		await show(watcher, '#/overview', null);
		await watcher.waitForSelector('body[data-live="on"]', {timeout: 15000});
		check(true, 'the overview subscribed to /api/events');
		// back to the first tab (a hidden tab runs no animation frames,
		// so the watcher is checked by interval polling below)
		await page.bringToFront();

		// pause the queue
		await show(page, '#/queues', null);
		const clicked = await clickInRow(page, 'name', queue, 'Pause');
		check(clicked, 'a Pause button for ' + queue);
		const paused = await page.waitForFunction(q => [...document.querySelectorAll('main[data-ready] tbody tr')].some(tr =>
			tr.querySelector('td[data-col="name"]')?.textContent === q &&
			tr.querySelector('td[data-col="paused"]')?.textContent === 'true'), {timeout: 15000}, queue).then(() => true, () => false);
		check(paused, 'the queues page shows ' + queue + ' paused');
		try {
			await watcher.waitForFunction(q => [...document.querySelectorAll('main[data-ready] tbody tr')].some(tr =>
				tr.querySelector('td[data-col="queue"]')?.textContent === q &&
				tr.querySelector('td[data-col="paused"]')?.textContent === 'true'), {timeout: 15000, polling: 200}, queue);
			check(true, 'the watching tab\'s overview shows ' + queue + ' paused, without a reload');
		} catch (e) {
			check(false, 'the watching tab\'s overview shows ' + queue + ' paused, without a reload: ' + e.message);
		}
		await watcher.screenshot({path: out + '/overview-live.png'});
		await watcher.close();

		// edit a setting of the queue on the queues page, and save it
		await show(page, '#/queues', null);
		const edited = await page.evaluate(q => {
			for (const tr of document.querySelectorAll('main[data-ready] tbody tr')) {
				if (tr.querySelector('td[data-col="name"]')?.textContent !== q) continue;
				const input = tr.querySelector('input[name="max_attempts"]');
				const save = tr.querySelector('button[data-action="Save settings"]');
				if (!input || !save) return false;
				input.value = '9';
				save.click();
				return true;
			}
			return false;
		}, queue);
		check(edited, 'a max_attempts field and a Save settings button for ' + queue);
		const saved = await waitText(page, '#flash', t => /settings of|max_attempts/.test(t));
		check(/settings of .* saved: max_attempts/.test(saved), 'the setting is saved: ' + saved);
		await page.screenshot({path: out + '/queues-edited.png'});

		// the schedules page says the spec in plain words
		t = await show(page, '#/schedules', null);
		check(t.includes('every 5 minutes'), 'the schedules page says "*/5 * * * *" in plain words');

		// the bulk bar: count what the filter matches, retry them all.  A
		// live redraw (an event from an earlier action, say) draws the page
		// again without the count: count again then
		let matching = null;
		let retried = false;
		for (let round = 0; round < 3 && !retried; round++) {
			try {
				await show(page, '#/jobs?queue=' + bulkQueue + '&state=dead', null);
				await page.click('#bulk-count');
				await page.waitForSelector('#bulk-matching', {timeout: 5000});
				matching = await page.$eval('#bulk-matching', e => e.textContent);
				await page.screenshot({path: out + '/bulk.png'});
				retried = await page.evaluate(() => {
					const b = document.querySelector('button[data-action="Retry all"]');
					if (!b) return false;
					b.click();
					return true;
				});
			} catch (e) {
				console.error('the bulk bar, round ' + (round + 1) + ': ' + e.message);
			}
		}
		check(/All 3 matching/.test(matching), 'the bulk bar counts the 3 matching jobs: ' + matching);
		check(retried, 'a Retry all button in the bulk bar');
		const bulkFlash = await waitText(page, '#flash', t => /Retry all/.test(t));
		check(/3 of 3 job\(s\), in 1 batch/.test(bulkFlash), 'Retry all, confirmed: ' + bulkFlash);

		// run the schedule now
		await show(page, '#/schedules', null);
		const ran = await clickInRow(page, 'name', schedule, 'Run now');
		check(ran, 'a row for schedule ' + schedule);
		const flash = await waitText(page, '#flash', t => /Run now/.test(t));
		check(/job_id/.test(flash), 'Run now answered with a job id: ' + flash);
	} catch (e) {
		check(false, 'browser run: ' + e.stack);
	} finally {
		await browser.close();
	}
	process.exit(failed ? 1 : 0);
})();
