/*-------------------------------------------------------------------------
 *
 * admin.c
 *	  "atomizer enqueue" (one job with the options of atomizer.enqueue(),
 *	  its payload checked to be JSON before connecting; prints its id) and "atomizer stats" (a
 *	  table of the queues: waiting, running, dead, succeeded, and jobs
 *	  succeeded in the last minute).
 *
 *	  src/cli/admin.c
 *
 *-------------------------------------------------------------------------
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *
read_all_stdin(void)
{
	Buf			b = {0};
	char		tmp[8192];
	size_t		n;

	while ((n = fread(tmp, 1, sizeof(tmp), stdin)) > 0)
		buf_append(&b, tmp, n);
	if (b.data == NULL)
		buf_append(&b, "", 0);
	return b.data;
}

int
cmd_enqueue(int argc, char **argv)
{
	static const struct option opts[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"queue", required_argument, NULL, 'q'},
		{"task", required_argument, NULL, 't'},
		{"payload", required_argument, NULL, 'p'},
		{"run-at", required_argument, NULL, 'r'},
		{"priority", required_argument, NULL, 'P'},
		{"max-attempts", required_argument, NULL, 'm'},
		{"timeout", required_argument, NULL, 'T'},
		{"idempotency-key", required_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	const char *dsn = NULL;
	const char *queue = "default";
	const char *task = NULL;
	const char *payload = "{}";
	const char *run_at = NULL;
	const char *priority = "0";
	const char *max_attempts = NULL;
	const char *key = NULL;
	char		timeout[64];
	bool		has_timeout = false;
	bool		container;
	const char *vals[8];
	char		err[1024];
	PGconn	   *conn;
	PGresult   *r;
	int			c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+:q:t:p:k:h", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 'd':
				dsn = optarg;
				break;
			case 'q':
				queue = optarg;
				break;
			case 't':
				task = optarg;
				break;
			case 'p':
				payload = optarg;
				break;
			case 'r':
				run_at = optarg;
				break;
			case 'P':
				{
					char	   *end;
					long		v;

					errno = 0;
					v = strtol(optarg, &end, 10);
					if (errno != 0 || end == optarg || *end != '\0' ||
						v < -32768 || v > 32767)
						usage_error("enqueue ", "invalid value \"%s\" for --priority (an integer from -32768 to 32767)",
									optarg);
					priority = optarg;
				}
				break;
			case 'm':
				(void) parse_positive("enqueue ", "--max-attempts", optarg, 1);
				max_attempts = optarg;
				break;
			case 'T':
				snprintf(timeout, sizeof(timeout), "%lld milliseconds",
						 (long long) duration_opt("enqueue ", "--timeout", optarg, false));
				has_timeout = true;
				break;
			case 'k':
				if (optarg[0] == '\0')
					usage_error("enqueue ", "--idempotency-key must not be empty");
				key = optarg;
				break;
			case 'h':
				return print_help("enqueue");
			case ':':
				usage_error("enqueue ", "option %s needs a value", argv[optind - 1]);
				break;
			default:
				usage_error("enqueue ", "unknown option \"%s\"", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("enqueue ", "unexpected argument \"%s\"", argv[optind]);
	if (task == NULL)
		task = queue;
	if (strcmp(payload, "-") == 0)
		payload = read_all_stdin();
	if (!json_check(payload, &container, err, sizeof(err)))
		usage_error("enqueue ", "the payload is not valid JSON: %s", err);
	if (!container)
		usage_error("enqueue ", "the payload must be a JSON object or array, such as {\"n\": 1}");

	conn = connect_db(dsn, "atomizer enqueue", err, sizeof(err));
	if (conn == NULL)
	{
		fprintf(stderr, "%s: could not connect: %s\n", progname, err);
		return 1;
	}
	vals[0] = task;
	vals[1] = payload;
	vals[2] = queue;
	vals[3] = run_at;
	vals[4] = priority;
	vals[5] = max_attempts;
	vals[6] = has_timeout ? timeout : NULL;
	vals[7] = key;
	r = PQexecParams(conn,
					 "SELECT atomizer.enqueue(handler => $1, payload => $2::jsonb, queue => $3,"
					 " run_at => COALESCE($4::timestamptz, pg_catalog.now()), priority => $5::integer,"
					 " max_attempts => $6::integer, timeout => $7::interval,"
					 " idempotency_key => $8)",
					 8, NULL, vals, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "%s: %s\n", progname,
				oneline(PQresultErrorMessage(r), err, sizeof(err)));
		PQclear(r);
		PQfinish(conn);
		return 1;
	}
	printf("%s\n", PQgetvalue(r, 0, 0));
	PQclear(r);
	PQfinish(conn);
	return 0;
}

int
cmd_stats(int argc, char **argv)
{
	static const struct option opts[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	static const char *const heads[] = {
		"queue", "flags", "waiting", "running", "dead", "succeeded", "per min"
	};
	const char *dsn = NULL;
	char		err[1024];
	PGconn	   *conn;
	PGresult   *r;
	int			c;
	int			ncol = 7;
	int			width[7];

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 'd':
				dsn = optarg;
				break;
			case 'h':
				return print_help("stats");
			case ':':
				usage_error("stats ", "option %s needs a value", argv[optind - 1]);
				break;
			default:
				usage_error("stats ", "unknown option \"%s\"", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("stats ", "unexpected argument \"%s\"", argv[optind]);

	conn = connect_db(dsn, "atomizer stats", err, sizeof(err));
	if (conn == NULL)
	{
		fprintf(stderr, "%s: could not connect: %s\n", progname, err);
		return 1;
	}
	r = PQexec(conn,
			   "SELECT s.queue,"
			   " concat_ws(',', CASE WHEN s.external THEN 'external' END,"
			   "                CASE WHEN s.paused THEN 'paused' END),"
			   " s.scheduled + s.available + s.retrying, s.running, s.dead, s.succeeded,"
			   " (SELECT pg_catalog.count(*) FROM atomizer.jobs j"
			   "   WHERE j.queue = s.queue AND j.state = 'succeeded'"
			   "     AND j.finished_at > pg_catalog.now() - interval '1 minute')"
			   " FROM atomizer.queue_stats s ORDER BY s.queue");
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "%s: %s\n", progname,
				oneline(PQresultErrorMessage(r), err, sizeof(err)));
		PQclear(r);
		PQfinish(conn);
		return 1;
	}
	for (int j = 0; j < ncol; j++)
	{
		width[j] = strlen(heads[j]);
		for (int i = 0; i < PQntuples(r); i++)
			if ((int) strlen(PQgetvalue(r, i, j)) > width[j])
				width[j] = strlen(PQgetvalue(r, i, j));
	}
	for (int j = 0; j < ncol; j++)
		printf(j < 2 ? "%-*s%s" : "%*s%s", width[j], heads[j], j < ncol - 1 ? "  " : "\n");
	for (int j = 0; j < ncol; j++)
	{
		for (int k = 0; k < width[j]; k++)
			putchar('-');
		fputs(j < ncol - 1 ? "  " : "\n", stdout);
	}
	for (int i = 0; i < PQntuples(r); i++)
		for (int j = 0; j < ncol; j++)
			printf(j < 2 ? "%-*s%s" : "%*s%s", width[j], PQgetvalue(r, i, j),
				   j < ncol - 1 ? "  " : "\n");
	PQclear(r);
	PQfinish(conn);
	return 0;
}
