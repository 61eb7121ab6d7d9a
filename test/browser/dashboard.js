// dashboard.js BASE_URL USER PASSWORD OUT_DIR DEAD_JOB_ID QUEUE SCHEDULE
//
// Drives Debian's headless Chromium through the atomizer dashboard (for
// test/t/060_dashboard.pl): loads every page and takes a screenshot of
// each into OUT_DIR, checks that a payload holding <script> is shown as
// text and never run, retries dead job DEAD_JOB_ID from its page and sees
// it become available, pauses QUEUE from the queues page, and runs
// SCHEDULE now from the schedules page.  Prints one line per check,
// "ok ..." or "not ok ...", and exits non-zero when one failed.
'use strict';
const puppeteer = require('puppeteer-core');

const [base, user, password, out, deadId, queue, schedule] = process.argv.slice(2);
let failed = 0;

function check(cond, what) {
	console.log((cond ? 'ok ' : 'not ok ') + what);
	if (!cond) failed++;
}

async function show(page, hash, shot) {
	await page.goto(base + '/' + hash, {waitUntil: 'load'});
	// the page marks main[data-ready] once drawn; wait for this hash's
	await page.waitForFunction(
		h => { const m = document.querySelector('main[data-ready]'); return m && location.hash === h; },
		{timeout: 15000}, hash);
	await page.waitForSelector('main[data-ready]', {timeout: 15000});
	if (shot) await page.screenshot({path: out + '/' + shot + '.png'});
	return page.$eval('main', m => m.textContent);
}

async function clickAndRedraw(page, selector) {
	// an action redraws main: wait for the old one to go
	const old = await page.$('main[data-ready]');
	await page.click(selector);
	await page.waitForFunction(o => !document.body.contains(o), {timeout: 15000}, old);
	await page.waitForSelector('main[data-ready]', {timeout: 15000});
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
		await clickAndRedraw(page, 'button[data-action="Retry"]');
		const state = await page.$eval('#job-state', e => e.textContent);
		check(state === 'available', 'after Retry the job is available (it is ' + state + ')');
		await page.screenshot({path: out + '/job-retried.png'});

		// pause the queue
		await show(page, '#/queues', null);
		const rows = await page.$$('tbody tr');
		let clicked = false;
		for (const row of rows) {
			const name = await row.$eval('td[data-col="name"]', e => e.textContent);
			if (name === queue) {
				const old = await page.$('main[data-ready]');
				const b = await row.$('button[data-action="Pause"]');
				if (b) {
					await b.click();
					await page.waitForFunction(o => !document.body.contains(o), {timeout: 15000}, old);
					await page.waitForSelector('main[data-ready]');
					clicked = true;
				}
				break;
			}
		}
		check(clicked, 'a Pause button for ' + queue);
		const paused = await page.$$eval('tbody tr', (trs, q) => trs.some(tr =>
			tr.querySelector('td[data-col="name"]').textContent === q &&
			tr.querySelector('td[data-col="paused"]').textContent === 'true'), queue);
		check(paused, 'the queues page shows ' + queue + ' paused');

		// run the schedule now
		await show(page, '#/schedules', null);
		const runs = await page.$$('tbody tr');
		let row = null;
		for (const tr of runs)
			if (await tr.$eval('td[data-col="name"]', e => e.textContent) === schedule) row = tr;
		check(row !== null, 'a row for schedule ' + schedule);
		const old = await page.$('main[data-ready]');
		await (await row.$('button[data-action="Run now"]')).click();
		await page.waitForFunction(o => !document.body.contains(o), {timeout: 15000}, old);
		await page.waitForSelector('main[data-ready]');
		const flash = await page.$eval('#flash', e => e.textContent);
		check(/job_id/.test(flash), 'Run now answered with a job id: ' + flash);
	} catch (e) {
		check(false, 'browser run: ' + e.stack);
	} finally {
		await browser.close();
	}
	process.exit(failed ? 1 : 0);
})();
