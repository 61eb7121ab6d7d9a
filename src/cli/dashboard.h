/*-------------------------------------------------------------------------
 *
 * dashboard.h
 *	  Declarations shared by the files of "atomizer dashboard": the command
 *	  and its listen policy (dashboard.c), HTTP, logins, sessions and CSRF
 *	  (dashboard_http.c), the JSON API and /metrics (dashboard_api.c),
 *	  live updates by Server-Sent Events (dashboard_events.c),
 *	  every SQL statement (dashboard_sql.c), and the page's files built
 *	  into the binary (dashboard/, assets.gen.c made by dashboard/embed.sh).
 *
 *	  src/cli/dashboard.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ATOMIZER_DASHBOARD_H
#define ATOMIZER_DASHBOARD_H

#include "cli.h"

#include <microhttpd.h>

/* one static file of the page */
typedef struct DashboardAsset
{
	const char *path;			/* "/index.html" */
	const char *type;			/* Content-Type */
	const unsigned char *data;
	size_t		len;
} DashboardAsset;

extern const DashboardAsset dashboard_assets[];

/* the dashboard's settings, fixed at start */
typedef struct DashboardConfig
{
	const char *dsn;
	bool		login;			/* HTTP basic auth as the visitor's own role */
	bool		read_only;		/* no state-changing request */
} DashboardConfig;

extern DashboardConfig dashboard_config;

/* one API request being answered */
typedef struct DashRequest
{
	struct MHD_Connection *conn;
	const char *method;
	const char *url;
	PGconn	   *db;				/* the visitor's role's connection */
	int			status;			/* HTTP status of the answer */
	const char *content_type;
	Buf			body;
} DashRequest;

/* dashboard_http.c */
extern struct MHD_Daemon *dashboard_http_start(const struct sockaddr *addr,
											   bool ipv6);
extern void json_escape(Buf *b, const char *s);

/* dashboard_events.c */
extern void dashboard_events_start(void);
extern void dashboard_events_stop(void);
extern void dashboard_events_publish(const char *queue);
extern void dashboard_events_offer(const char *user, const char *password);
extern struct MHD_Response *dashboard_events_response(const char *user,
													  const char *password);

/* dashboard_api.c */
extern bool dashboard_api_route(DashRequest *r, bool *writes);
extern void dashboard_api_answer(DashRequest *r);
extern void dashboard_error(DashRequest *r, int status, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));

/* dashboard_sql.c */
extern const char *const DASHBOARD_SQL_WHOAMI;
extern const char *const DASHBOARD_SQL_OVERVIEW;
extern const char *const DASHBOARD_SQL_COUNTERS;
extern const char *const DASHBOARD_SQL_JOBS;
extern const char *const DASHBOARD_SQL_JOBS_COUNT;
extern const char *const DASHBOARD_SQL_JOBS_RETRY_BATCH;
extern const char *const DASHBOARD_SQL_JOBS_CANCEL_BATCH;
extern const char *const DASHBOARD_SQL_JOB;
extern const char *const DASHBOARD_SQL_RETRY;
extern const char *const DASHBOARD_SQL_CANCEL;
extern const char *const DASHBOARD_SQL_PURGE;
extern const char *const DASHBOARD_SQL_DEAD_GROUPS;
extern const char *const DASHBOARD_SQL_DEAD_RETRY_BATCH;
extern const char *const DASHBOARD_SQL_QUEUES;
extern const char *const DASHBOARD_SQL_PAUSE;
extern const char *const DASHBOARD_SQL_RESUME;
extern const char *const DASHBOARD_SQL_QUEUE_SETTINGS;
extern const char *const DASHBOARD_SQL_SCHEDULES;
extern const char *const DASHBOARD_SQL_RUN_SCHEDULE;
extern const char *const DASHBOARD_SQL_ENABLE_SCHEDULE;
extern const char *const DASHBOARD_SQL_DISABLE_SCHEDULE;
extern const char *const DASHBOARD_SQL_WORKERS;
extern const char *const DASHBOARD_SQL_METRICS;
extern const char *const DASHBOARD_SQL_FEED_QUEUES;
extern const char *const DASHBOARD_SQL_FEED_COUNTERS;

#endif							/* ATOMIZER_DASHBOARD_H */
