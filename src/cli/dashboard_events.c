/*-------------------------------------------------------------------------
 *
 * dashboard_events.c
 *	  Live updates: GET /api/events (Server-Sent Events) and the one feed
 *	  behind every stream.
 *
 *	  The feed is one thread with one libpq connection, whatever the number
 *	  of browsers.  It learns that something changed in queue q two ways:
 *	  - LISTEN on atomizer_<q> for every queue that exists (atomizer
 *		notifies the channels of external queues when jobs become
 *		available); the LISTEN set follows the queue list, read once a
 *		second (atomizer.queue: O(queues));
 *	  - once a second, atomizer.metrics' per-queue counters of finished
 *		jobs (atomizer_jobs_finished_total) and of claims
 *		(atomizer_job_wait_seconds_count): shared-memory counters, O(queues),
 *		so internal queues, which are never notified, are seen too.  An
 *		event is sent only when a figure changed.
 *	  The dashboard's own successful actions are events too (queue unknown:
 *	  "every queue").  The feed polls only while a stream is open.
 *
 *	  An event says only "something changed, in these queues": never job
 *	  data.  Each browser then reads again with its own role's connection,
 *	  so row-level security still decides what it sees.
 *
 *	  Whose connection the feed is: with a --dsn that names a user, that
 *	  role's; with logins, the role of a visitor who opened a stream (the
 *	  first one, or a later one when the current role may not read
 *	  atomizer.metrics: without it only notified queues and the dashboard's
 *	  own actions make events).
 *
 *	  Events are kept in a ring of the last RING_SIZE; a stream that fell
 *	  further behind is told "every queue".  A stream's thread (libmicrohttpd
 *	  runs one thread per connection) waits on a condition variable and
 *	  sends a comment every KEEPALIVE_SECONDS so that proxies and the
 *	  connection timeout see it alive.
 *
 *	  src/cli/dashboard_events.c
 *
 *-------------------------------------------------------------------------
 */
#include "dashboard.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#define RING_SIZE 256
#define MAX_QUEUES 1024
#define QUEUE_NAME_LEN 64
#define KEEPALIVE_SECONDS 15
#define POLL_MS 1000

/* one event: something changed in queue (empty: every queue) */
typedef struct FeedEvent
{
	char		queue[QUEUE_NAME_LEN];
} FeedEvent;

/* one queue the feed knows: its channel is listened to, its figure kept */
typedef struct FeedQueue
{
	char		name[QUEUE_NAME_LEN];
	char		figure[64];		/* counters' sum, as text ("" unknown) */
	bool		seen;			/* in this poll's queue list */
} FeedQueue;

/* one open stream */
typedef struct Stream
{
	unsigned long long seq;		/* events sent up to */
	time_t		last_write;
	bool		hello;			/* the first message is sent */
} Stream;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static FeedEvent ring[RING_SIZE];
static unsigned long long seq;	/* events published so far */
static int	streams;			/* open streams */
static bool stopping;

/* the feed's credentials (login mode), offered by visitors' streams */
static char *offer_user;
static char *offer_password;
static bool offer_new;

/* ------------------------------------------------------------- the ring */

/* Publish "queue changed" (NULL: every queue); lock held by the caller. */
static void
publish_locked(const char *queue)
{
	FeedEvent  *e = &ring[seq % RING_SIZE];

	snprintf(e->queue, sizeof(e->queue), "%s", queue ? queue : "");
	seq++;
	pthread_cond_broadcast(&changed);
}

/* Publish "queue changed" (NULL: every queue), from any thread. */
void
dashboard_events_publish(const char *queue)
{
	pthread_mutex_lock(&lock);
	publish_locked(queue);
	pthread_mutex_unlock(&lock);
}

/*
 * A visitor with an open stream offers their login to the feed: taken when
 * the feed has no connection, or has one that may not read the counters.
 */
void
dashboard_events_offer(const char *user, const char *password)
{
	if (user == NULL)
		return;
	pthread_mutex_lock(&lock);
	if (offer_user == NULL || strcmp(offer_user, user) != 0)
	{
		free(offer_user);
		free(offer_password);
		offer_user = xstrdup(user);
		offer_password = xstrdup(password ? password : "");
		offer_new = true;
		pthread_cond_broadcast(&changed);
	}
	pthread_mutex_unlock(&lock);
}

/* ------------------------------------------------------------- the feed */

typedef struct Feed
{
	PGconn	   *conn;
	char	   *user;			/* whose login (NULL: the DSN's role) */
	bool		metrics_ok;		/* may read atomizer.metrics */
	bool		told;			/* logged why it may not */
	bool		primed;			/* the first poll since connecting is done */
	FeedQueue	queues[MAX_QUEUES];
	int			nqueues;
} Feed;

static void
feed_disconnect(Feed *f)
{
	PQfinish(f->conn);
	f->conn = NULL;
	f->nqueues = 0;
	f->primed = false;
	free(f->user);
	f->user = NULL;
}

/* Connect as the DSN's role, or as the offered login; false if not now. */
static bool
feed_connect(Feed *f)
{
	char		err[1024];

	if (!dashboard_config.login)
	{
		f->conn = connect_db(dashboard_config.dsn, "atomizer dashboard feed", err, sizeof(err));
		if (f->conn == NULL)
			logmsg("dashboard: the live-update feed could not connect: %s", err);
		return f->conn != NULL;
	}
	else
	{
		const char *keys[] = {"dbname", "user", "password", "application_name",
		"client_encoding", NULL};
		const char *vals[6];
		int			first = dashboard_config.dsn ? 0 : 1;
		PGconn	   *c;

		pthread_mutex_lock(&lock);
		offer_new = false;
		if (offer_user == NULL)
		{
			pthread_mutex_unlock(&lock);
			return false;
		}
		vals[0] = dashboard_config.dsn;
		vals[1] = offer_user;
		vals[2] = offer_password;
		vals[3] = "atomizer dashboard feed";
		vals[4] = "UTF8";
		vals[5] = NULL;
		c = PQconnectdbParams(keys + first, vals + first, 1);
		f->user = xstrdup(offer_user);
		pthread_mutex_unlock(&lock);
		if (c == NULL || PQstatus(c) != CONNECTION_OK)
		{
			logmsg("dashboard: the live-update feed could not connect as \"%s\": %s",
				   f->user, oneline(c ? PQerrorMessage(c) : "out of memory", err, sizeof(err)));
			PQfinish(c);
			free(f->user);
			f->user = NULL;
			return false;
		}
		f->conn = c;
		return true;
	}
}

/* Run a command on the feed's connection; false if it failed. */
static bool
feed_command(Feed *f, const char *sql)
{
	PGresult   *res = PQexec(f->conn, sql);
	bool		ok = PQresultStatus(res) == PGRES_COMMAND_OK;

	if (!ok)
		logmsg("dashboard: live-update feed: %s", PQresultErrorMessage(res));
	PQclear(res);
	return ok;
}

/* LISTEN or UNLISTEN atomizer_<queue>, the name quoted all the same. */
static bool
feed_listen(Feed *f, const char *queue, bool on)
{
	char		channel[QUEUE_NAME_LEN + 16];
	char	   *quoted;
	Buf			sql = {0};
	bool		ok;

	snprintf(channel, sizeof(channel), "atomizer_%s", queue);
	quoted = PQescapeIdentifier(f->conn, channel, strlen(channel));
	if (quoted == NULL)
		return false;
	buf_appendf(&sql, "%s %s", on ? "LISTEN" : "UNLISTEN", quoted);
	PQfreemem(quoted);
	ok = feed_command(f, sql.data);
	buf_free(&sql);
	return ok;
}

static FeedQueue *
feed_queue(Feed *f, const char *name)
{
	for (int i = 0; i < f->nqueues; i++)
		if (strcmp(f->queues[i].name, name) == 0)
			return &f->queues[i];
	return NULL;
}

/*
 * One poll: the queue list (LISTEN the new ones, UNLISTEN the dropped
 * ones: both are events), then the counters; publish the queues whose
 * figure changed.  False when the connection failed.
 */
static bool
feed_poll(Feed *f)
{
	PGresult   *res;
	int			i,
				n;

	res = PQexec(f->conn, DASHBOARD_SQL_FEED_QUEUES);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		logmsg("dashboard: live-update feed: %s", PQresultErrorMessage(res));
		PQclear(res);
		return PQstatus(f->conn) == CONNECTION_OK;
	}
	for (i = 0; i < f->nqueues; i++)
		f->queues[i].seen = false;
	for (i = 0; i < PQntuples(res); i++)
	{
		const char *name = PQgetvalue(res, i, 0);
		FeedQueue  *q = feed_queue(f, name);

		if (q == NULL && f->nqueues < MAX_QUEUES &&
			strlen(name) < QUEUE_NAME_LEN && feed_listen(f, name, true))
		{
			q = &f->queues[f->nqueues++];
			snprintf(q->name, sizeof(q->name), "%s", name);
			q->figure[0] = '\0';
			if (f->primed)
				dashboard_events_publish(name);	/* a new queue */
		}
		if (q != NULL)
			q->seen = true;
	}
	PQclear(res);
	f->primed = true;
	for (i = 0; i < f->nqueues;)
	{
		if (f->queues[i].seen)
		{
			i++;
			continue;
		}
		feed_listen(f, f->queues[i].name, false);
		dashboard_events_publish(f->queues[i].name);
		f->queues[i] = f->queues[--f->nqueues];
	}

	res = PQexec(f->conn, DASHBOARD_SQL_FEED_COUNTERS);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		if (state && strcmp(state, "42501") == 0)
		{
			if (!f->told)
				logmsg("dashboard: live updates: role \"%s\" may not read atomizer.metrics, so only the external queues' notifications and the dashboard's own actions make events (a visitor with that right who opens the page becomes the feed's role)",
					   PQuser(f->conn));
			f->told = true;
			f->metrics_ok = false;
		}
		else
			logmsg("dashboard: live-update feed: %s", PQresultErrorMessage(res));
		PQclear(res);
		return PQstatus(f->conn) == CONNECTION_OK;
	}
	f->metrics_ok = true;
	n = PQntuples(res);
	for (i = 0; i < n; i++)
	{
		FeedQueue  *q = feed_queue(f, PQgetvalue(res, i, 0));
		const char *figure = PQgetvalue(res, i, 1);

		if (q == NULL)
			continue;
		if (q->figure[0] != '\0' && strcmp(q->figure, figure) != 0)
			dashboard_events_publish(q->name);
		snprintf(q->figure, sizeof(q->figure), "%s", figure);
	}
	PQclear(res);
	return true;
}

/* Publish the queues whose channel was notified; false if the link broke. */
static bool
feed_notifications(Feed *f)
{
	PGnotify   *n;

	if (!PQconsumeInput(f->conn))
		return false;
	while ((n = PQnotifies(f->conn)) != NULL)
	{
		const char *queue = strncmp(n->relname, "atomizer_", 9) == 0 ?
			n->relname + 9 : NULL;

		dashboard_events_publish(queue);
		PQfreemem(n);
	}
	return true;
}

/* Wait up to ms for a notification on the feed's socket. */
static void
feed_wait(Feed *f, int ms)
{
	int			sock = PQsocket(f->conn);
	fd_set		in;
	struct timeval tv;

	if (sock < 0)
		return;
	FD_ZERO(&in);
	FD_SET(sock, &in);
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	if (select(sock + 1, &in, NULL, NULL, &tv) < 0 && errno != EINTR)
		logmsg("dashboard: live-update feed: select: %m");
}

/* Sleep until a stream opens, a login is offered, or ms pass. */
static void
feed_idle(int ms)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long) (ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L)
	{
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&lock);
	if (!stopping)
		pthread_cond_timedwait(&changed, &lock, &until);
	pthread_mutex_unlock(&lock);
}

/* The feed thread: connect, then poll and listen while streams are open. */
static void *
feed_main(void *arg)
{
	static Feed f;
	int64_t		next_poll = 0;

	(void) arg;
	for (;;)
	{
		bool		watched,
					swap;

		pthread_mutex_lock(&lock);
		if (stopping)
		{
			pthread_mutex_unlock(&lock);
			break;
		}
		watched = streams > 0;
		/* a newly offered login replaces one that may not read the counters */
		swap = f.conn != NULL && offer_new && !f.metrics_ok && f.user != NULL;
		pthread_mutex_unlock(&lock);

		if (!watched)
		{
			feed_idle(POLL_MS);
			continue;
		}
		if (swap)
			feed_disconnect(&f);
		if (f.conn == NULL)
		{
			f.metrics_ok = false;
			f.told = false;
			if (!feed_connect(&f))
			{
				feed_idle(POLL_MS);
				continue;
			}
			next_poll = 0;
		}
		if (now_ms() >= next_poll)
		{
			if (!feed_poll(&f))
			{
				feed_disconnect(&f);
				continue;
			}
			next_poll = now_ms() + POLL_MS;
		}
		if (!feed_notifications(&f))
		{
			feed_disconnect(&f);
			continue;
		}
		{
			int64_t		left = next_poll - now_ms();

			feed_wait(&f, left > 0 ? (int) left : 0);
		}
		if (!feed_notifications(&f))
			feed_disconnect(&f);
	}
	if (f.conn)
		feed_disconnect(&f);
	return NULL;
}

/* Start the feed thread (it connects when the first stream opens). */
void
dashboard_events_start(void)
{
	pthread_t	t;

	if (pthread_create(&t, NULL, feed_main, NULL) != 0)
	{
		logmsg("could not start the live-update feed: %m");
		exit(1);
	}
	pthread_detach(t);
}

/* End every stream (they return end-of-stream) and the feed. */
void
dashboard_events_stop(void)
{
	pthread_mutex_lock(&lock);
	stopping = true;
	pthread_cond_broadcast(&changed);
	pthread_mutex_unlock(&lock);
}

/* ------------------------------------------------------------ a stream */

/*
 * libmicrohttpd's content reader of one stream, called in the stream's own
 * thread: wait for events after the stream's last one (or the keepalive
 * time), then write one message.  Messages are small; one that would not
 * fit in max is never cut: the whole ring fits in a message of queue
 * names, and a stream that is behind gets "every queue".
 */
static ssize_t
stream_read(void *cls, uint64_t pos, char *out, size_t max)
{
	Stream	   *s = cls;
	Buf			b = {0};
	struct timespec until;
	ssize_t		n;

	(void) pos;
	if (!s->hello)
	{
		s->hello = true;
		pthread_mutex_lock(&lock);
		s->seq = seq;
		pthread_mutex_unlock(&lock);
		n = snprintf(out, max, "retry: 2000\nevent: hello\ndata: {}\n\n");
		return n;
	}

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += KEEPALIVE_SECONDS;
	pthread_mutex_lock(&lock);
	while (s->seq == seq && !stopping)
	{
		if (pthread_cond_timedwait(&changed, &lock, &until) == ETIMEDOUT)
			break;
	}
	if (stopping)
	{
		pthread_mutex_unlock(&lock);
		return MHD_CONTENT_READER_END_OF_STREAM;
	}
	if (s->seq == seq)
	{
		pthread_mutex_unlock(&lock);
		return snprintf(out, max, ": keepalive\n\n");
	}
	buf_appendf(&b, "event: change\ndata: {\"queues\": ");
	if (seq - s->seq > RING_SIZE)
		buf_appendf(&b, "null");
	else
	{
		bool		all = false;
		int			k = 0;
		Buf			names = {0};

		for (unsigned long long i = s->seq; i < seq; i++)
		{
			const char *q = ring[i % RING_SIZE].queue;
			bool		dup = false;

			if (q[0] == '\0')
			{
				all = true;
				break;
			}
			for (unsigned long long j = s->seq; j < i && !dup; j++)
				dup = strcmp(ring[j % RING_SIZE].queue, q) == 0;
			if (dup)
				continue;
			buf_appendf(&names, "%s", k++ ? ", " : "[");
			json_escape(&names, q);
		}
		if (all)
			buf_appendf(&b, "null");
		else
			buf_appendf(&b, "%s]", names.data);
		buf_free(&names);
	}
	buf_appendf(&b, "}\n\n");
	s->seq = seq;
	pthread_mutex_unlock(&lock);

	if (b.len > max)
		n = snprintf(out, max, "event: change\ndata: {\"queues\": null}\n\n");
	else
	{
		memcpy(out, b.data, b.len);
		n = (ssize_t) b.len;
	}
	buf_free(&b);
	return n;
}

/* A stream ended (the browser left, or the dashboard stops). */
static void
stream_free(void *cls)
{
	pthread_mutex_lock(&lock);
	streams--;
	pthread_mutex_unlock(&lock);
	free(cls);
}

/*
 * The response of GET /api/events for a visitor already logged in (user:
 * their role, NULL without logins): a stream of "change" events.
 */
struct MHD_Response *
dashboard_events_response(const char *user, const char *password)
{
	Stream	   *s = xmalloc(sizeof(Stream));
	struct MHD_Response *resp;

	memset(s, 0, sizeof(*s));
	dashboard_events_offer(user, password);
	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
											 stream_read, s, stream_free);
	if (resp == NULL)
	{
		free(s);
		return NULL;
	}
	pthread_mutex_lock(&lock);
	streams++;
	pthread_cond_broadcast(&changed);
	pthread_mutex_unlock(&lock);
	return resp;
}
